"""Import bodies (JSON, NDJSON, CSV), product validation, and search filters: pure functions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sluicegate.services.search.filters import FilterError, ProductFilters
from sluicegate.services.search.products import ProductError, parse_body, parse_products, search_text
from sluicegate.services.search.text import query_terms

SAREE = {"id": "sr-1", "name": "Silk Saree", "price": 1200, "sizes": ["Free Size"], "colors": ["red"], "stock": 3}


def test_json_ndjson_and_csv_bodies_give_the_same_products() -> None:
    as_json = parse_body(orjson.dumps({"products": [SAREE]}), "application/json")
    as_ndjson = parse_body(orjson.dumps(SAREE) + b"\n\n", "application/x-ndjson; charset=utf-8")
    csv = b"id,name,price,sizes,colors,stock\nsr-1,Silk Saree,1200,Free Size,red,3\n"
    as_csv = parse_body(csv, "text/csv")
    products = [parse_products(raw)[0] for raw in (as_json, as_ndjson, as_csv)]
    assert products[0] == products[1] == products[2]
    assert products[0].data == {**SAREE, "price": 1200.0}


def test_csv_list_cells_split_on_semicolons_or_bars_and_unknown_columns_become_attributes() -> None:
    csv = 'id,name,sizes,tags,fabric,attributes\nk1,Kurta,S;M| L,festive|cotton,linen,"{""fit"": ""slim""}"\n'
    (product,) = parse_products(parse_body(csv.encode(), "text/csv"))
    assert product.data["sizes"] == ["S", "M", "L"]
    assert product.data["tags"] == ["festive", "cotton"]
    assert product.data["attributes"] == {"fabric": "linen", "fit": "slim"}
    assert "linen" in search_text(product) and "festive" in search_text(product)


@pytest.mark.parametrize(
    ("product", "field"),
    [
        ({"name": "No id"}, "id"),
        ({"id": "x"}, "name"),
        ({"id": "x", "name": "  "}, "name"),
        ({"id": "x", "name": "n", "price": "cheap"}, "price"),
        ({"id": "x", "name": "n", "price": -1}, "price"),
        ({"id": "x", "name": "n", "stock": 2.5}, "stock"),
        ({"id": "x", "name": "n", "sizes": [1, 2]}, "sizes"),
        ({"id": "x", "name": "n", "attributes": {"a": [1]}}, "attributes"),
        ({"id": "x", "name": "n", "colour": "red"}, "colour"),
    ],
)
def test_a_bad_product_is_refused_naming_its_index_and_field(product: dict[str, Any], field: str) -> None:
    with pytest.raises(ProductError) as caught:
        parse_products([SAREE, product])
    assert caught.value.index == 1
    assert caught.value.field == field
    assert str(caught.value).startswith("Product 1:")


def test_an_id_twice_in_one_import_is_refused_at_its_second_place() -> None:
    with pytest.raises(ProductError) as caught:
        parse_products([SAREE, {"id": "other", "name": "n"}, {**SAREE, "name": "again"}])
    assert (caught.value.index, caught.value.field) == (2, "id")


def test_bodies_that_are_not_an_import_are_refused() -> None:
    with pytest.raises(ProductError, match="products"):
        parse_body(b'[{"id": "a"}]', "application/json")
    with pytest.raises(ProductError, match="Line 2"):
        parse_body(b'{"id": "a", "name": "b"}\n{nope\n', "application/x-ndjson")
    with pytest.raises(ProductError, match="id column"):
        parse_body(b"name,price\nx,1\n", "text/csv")
    with pytest.raises(ProductError, match="price must be a number"):
        parse_body(b"id,name,price\nx,y,abc\n", "text/csv")


def test_filters_parse_from_query_strings_and_json_alike() -> None:
    from_query = ProductFilters.parse({"category": "Saree", "minPrice": "100", "maxPrice": "200.5", "inStock": "true"})
    from_json = ProductFilters.parse({"category": "Saree", "minPrice": 100, "maxPrice": 200.5, "inStock": True})
    assert from_query == from_json == ProductFilters(category="Saree", min_price=100, max_price=200.5, in_stock=True)
    assert from_query.describe() == {"category": "Saree", "minPrice": 100, "maxPrice": 200.5, "inStock": True}
    assert not ProductFilters.parse({"q": "ignored", "inStock": "false"}).active


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"minPrice": "10", "maxPrice": "5"}, "minPrice must not be above maxPrice"),
        ({"minPrice": "ten"}, "minPrice must be a number"),
        ({"maxPrice": "-3"}, "maxPrice must be at least 0"),
        ({"inStock": "maybe"}, "inStock must be true or false"),
        ({"size": 42}, "size must be a string"),
    ],
)
def test_bad_filters_are_refused_with_a_sentence(source: dict[str, Any], message: str) -> None:
    with pytest.raises(FilterError, match=message):
        ProductFilters.parse(source)


def test_json_filters_refuse_unknown_names() -> None:
    with pytest.raises(FilterError, match="Unknown filter 'colour'"):
        ProductFilters.parse({"colour": "red"}, strict=True)


def test_query_terms_drop_stop_words_and_single_letters_and_keep_order() -> None:
    assert query_terms("Show me a RED t-shirt for the wedding, red!") == ["show", "red", "shirt", "wedding"]
    assert query_terms('"); DROP TABLE products; --') == ["drop", "table", "products"]
    assert query_terms("the of and") == []
