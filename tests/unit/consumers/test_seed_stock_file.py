"""seed-stock refuses a bad file with a message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.inventory.__main__ import main
from services.inventory.main import SeedFileError, load_stock_file

DEMO = Path(__file__).resolve().parents[3] / "services" / "inventory" / "demo_catalogue.json"


def test_demo_catalogue_loads() -> None:
    levels = load_stock_file(DEMO)
    # Five SKUs in plenty, one the demo orders more of than there is (its rejected order).
    assert [lv.sku for lv in levels] == [*(f"SKU-{n}" for n in range(1, 6)), "SKU-LIMITED"]


def test_object_and_list_forms_are_accepted(tmp_path: Path) -> None:
    as_object = tmp_path / "a.json"
    as_object.write_text('{"A": 1, "B": 0}')
    as_list = tmp_path / "b.json"
    as_list.write_text('[{"sku": "A", "available": 1}, {"sku": "B", "available": 0}]')
    assert load_stock_file(as_object) == load_stock_file(as_list)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('"text"', "expected a JSON object"),
        ("[]", "no stock entries"),
        ('[{"sku": "A", "available": -1}]', "entry 0: available"),
        ('[{"sku": "A", "available": "5"}]', "entry 0: available"),
        ('[{"sku": "A"}]', "entry 0: available: Field required"),
        ('{"A": 1.5}', "entry 0: available"),
        ('[{"sku": "A", "available": 1}, {"sku": "A", "available": 2}]', "more than once"),
    ],
)
def test_bad_file_is_refused_naming_file_and_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "stock.json"
    path.write_text(content)
    with pytest.raises(SeedFileError) as error:
        load_stock_file(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_missing_file_exits_non_zero_before_touching_mongodb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unreachable MongoDB: if the command tried to connect it would fail differently.
    monkeypatch.setenv("MONGO_URI", "mongodb://127.0.0.1:1/?replicaSet=none")
    missing = tmp_path / "nope.json"
    assert main(["seed-stock", str(missing)]) == 2
    assert f"seed-stock: {missing}: file not found" in capsys.readouterr().err


def test_a_sku_is_seeded_in_the_form_the_order_api_stores(tmp_path: Path) -> None:
    # The order API stores identifiers in NFC (shared.identifiers); a seed file written with a
    # decomposed accent must name the same stock, and two spellings of one SKU are one SKU.
    path = tmp_path / "stock.json"
    path.write_text('{"CAFE\\u0301-250G": 3}')
    assert [lv.sku for lv in load_stock_file(path)] == ["CAF\u00c9-250G"]
    path.write_text('{"CAFE\\u0301-250G": 3, "CAF\\u00c9-250G": 4}')
    with pytest.raises(SeedFileError, match="more than once"):
        load_stock_file(path)
