package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// checkDockerfile parses a Dockerfile with BuildKit's own frontend parser (the one `docker build`
// uses) and runs the build checks that apply while parsing instructions (casing, deprecated
// instructions, shell-form CMD ...). Parser warnings and lint findings are errors: an image file
// that `docker build --check` would complain about is not accepted silently.
func checkDockerfile(path string) error {
	file, err := os.Open(path)
	if err != nil {
		return err
	}
	defer file.Close()
	parsed, err := parser.Parse(file)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var findings []string
	for _, warning := range parsed.Warnings {
		findings = append(findings, fmt.Sprintf("line %d: %s", warning.Location.Start.Line, warning.Short))
	}
	lint := linter.New(&linter.Config{
		Warn: func(rule, description, url, message string, location []parser.Range) {
			line := 0
			if len(location) > 0 {
				line = location[0].Start.Line
			}
			findings = append(findings, fmt.Sprintf("line %d: %s: %s", line, rule, message))
		},
	})
	stages, _, err := instructions.Parse(parsed.AST, lint)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(findings) > 0 {
		return fmt.Errorf("%s:\n  %s", path, strings.Join(findings, "\n  "))
	}
	fmt.Printf("%s: valid (%d stages)\n", path, len(stages))
	return nil
}
