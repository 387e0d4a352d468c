// Command composecheck validates Compose files with compose-go, the loader `docker compose`
// itself uses: schema validation of the Compose specification, interpolation, merging of several
// files (-f a.yml -f b.yml, like docker compose), normalisation and consistency checks (unknown
// services in depends_on, undefined volumes and networks ...).
//
// There is no Docker engine on the machines this project is developed and tested on, so this is
// how the test suite proves the compose file would be accepted by `docker compose`.
//
// Usage:
//
//	composecheck [-json] [-env NAME=VALUE ...] [-profile NAME ...] FILE [FILE...]
//	composecheck -dockerfile Dockerfile
//
// It exits 0 when the files load, 1 with the loader's error on stderr when they do not, 2 on a
// usage error. With -json it prints the loaded project (interpolated and normalised, exactly the
// model docker compose would act on) so tests can inspect it without re-implementing the loader.
// Interpolation sees only the -env variables given (the operator's environment a test stands
// for), never the caller's shell or a .env file. -profile activates a profile, as `docker compose
// --profile NAME` does (repeatable); without one only the services without profiles are loaded
// (a COMPOSE_PROFILES default in .env is the caller's to pass).
// With -dockerfile it checks a Dockerfile with BuildKit's parser instead (see dockerfile.go).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

// envList collects a repeated flag (-env NAME=VALUE, -profile NAME).
type envList []string

func (e *envList) String() string { return fmt.Sprint(*e) }

func (e *envList) Set(value string) error {
	*e = append(*e, value)
	return nil
}

func main() {
	asJSON := flag.Bool("json", false, "print the loaded, normalised project as JSON")
	var env envList
	flag.Var(&env, "env", "NAME=VALUE seen by interpolation (repeatable); nothing else is")
	dockerfile := flag.Bool("dockerfile", false, "check one Dockerfile instead of Compose files")
	var profiles envList
	flag.Var(&profiles, "profile", "activate a profile (repeatable), like docker compose --profile")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-json] [-env NAME=VALUE ...] [-profile NAME ...] FILE [FILE...] | -dockerfile FILE")
		flag.PrintDefaults()
	}
	flag.Parse()
	files := flag.Args()
	if len(files) == 0 || (*dockerfile && len(files) != 1) {
		flag.Usage()
		os.Exit(2)
	}
	var err error
	if *dockerfile {
		err = checkDockerfile(files[0])
	} else {
		err = run(files, *asJSON, env, profiles)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "composecheck: %v\n", err)
		os.Exit(1)
	}
}

func run(files []string, asJSON bool, env []string, profiles []string) error {
	// The project directory is the first file's folder, as with `docker compose -f`; that is
	// where build contexts and bind mounts are resolved from.
	workingDir, err := filepath.Abs(filepath.Dir(files[0]))
	if err != nil {
		return err
	}
	options, err := cli.NewProjectOptions(
		files,
		cli.WithWorkingDirectory(workingDir),
		// Environment-independent result: ignore the caller's shell and any .env file, so
		// the check says the same on every machine; only the -env variables are seen.
		// Defaults in ${VAR:-default} still apply.
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		// Consistency: depends_on, volumes, networks, secrets all refer to defined things.
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
		cli.WithName("composecheck"),
		// Exactly the profiles asked for (docker compose: --profile, else COMPOSE_PROFILES).
		cli.WithProfiles(profiles),
	)
	if err != nil {
		return err
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		return err
	}
	if !asJSON {
		fmt.Printf("%s: valid (%d services)\n", files[0], len(project.Services))
		return nil
	}
	out, err := project.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(out, '\n'))
	return err
}
