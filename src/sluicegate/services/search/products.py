"""Products as imported: parsing a JSON, NDJSON or CSV body and validating each product.

Pure functions, bytes in and :class:`Product` records out, tested without a server.

A product is ``{"id", "name", "description"?, "category"?, "price"?, "currency"?, "sizes"?,
"colors"?, "tags"?, "stock"?, "imageUrl"?, "attributes"?}``. ``id`` and ``name`` are
required; list fields are lists of strings (a single string is taken as a one-item list);
``attributes`` is an object of strings, numbers or booleans. A bad product is refused as a
whole import (:class:`ProductError` names its index, from 0, and its field).

CSV: a header row names the fields (any order; unknown columns go into ``attributes``);
list cells are split on ``;`` or ``|``; empty cells are absent fields; ``price`` and
``stock`` are parsed as numbers; an ``attributes`` column may hold a JSON object.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "LIST_FIELDS",
    "Product",
    "ProductError",
    "embedding_text",
    "parse_body",
    "parse_products",
    "search_text",
]

LIST_FIELDS = ("sizes", "colors", "tags")
_TEXT_FIELDS = {"id": 200, "name": 500, "description": 20_000, "category": 200, "currency": 10, "imageUrl": 2_000}
_KNOWN = frozenset({*_TEXT_FIELDS, *LIST_FIELDS, "price", "stock", "attributes"})
_LIST_SPLIT = re.compile(r"[;|]")
_MAX_ITEMS = 100
_MAX_ITEM_CHARS = 200


class ProductError(ValueError):
    """A product of an import is invalid.

    Attributes:
        index: the product's position in the body, from 0 (``None`` for the body itself).
        field: the offending field, or ``None``.
    """

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class Product:
    """One valid product: ``data`` is what searches return, the rest feeds indexes and filters."""

    id: str
    name: str
    category: str | None
    price: float | None
    stock: int | None
    data: dict[str, Any] = field(hash=False)


def parse_body(body: bytes, content_type: str) -> list[Any]:
    """The raw product objects of an import body, by its ``Content-Type``.

    Raises:
        ProductError: the body is not valid JSON, NDJSON or CSV.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        return _ndjson(body)
    if kind in ("text/csv", "application/csv"):
        return _csv(body)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProductError("The body is not valid JSON (send application/x-ndjson or text/csv for those)") from None
    if isinstance(parsed, dict) and isinstance(parsed.get("products"), list):
        return list(parsed["products"])
    raise ProductError('The body must be {"products": [...]}', field="products")


def _ndjson(body: bytes) -> list[Any]:
    out: list[Any] = []
    for number, line in enumerate(body.splitlines()):
        if not line.strip():
            continue
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            raise ProductError(f"Line {number + 1} is not valid JSON", index=len(out)) from None
    return out


def _csv(body: bytes) -> list[Any]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProductError("The CSV body is not UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise ProductError("The CSV header must name an id column", field="id")
    out: list[Any] = []
    for index, row in enumerate(reader):
        out.append(_csv_product(row, index))
    return out


def _csv_product(row: dict[str | Any, Any], index: int) -> dict[str, Any]:
    product: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, raw in row.items():
        if key is None:  # more cells than header columns
            raise ProductError(f"Product {index}: the row has more cells than the header", index=index)
        value = (raw or "").strip()
        if not value:
            continue
        if key in LIST_FIELDS:
            product[key] = [part.strip() for part in _LIST_SPLIT.split(value) if part.strip()]
        elif key in ("price", "stock"):
            product[key] = _csv_number(value, index, key)
        elif key == "attributes":
            try:
                product[key] = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise ProductError(
                    f"Product {index}: attributes must be a JSON object", index=index, field=key
                ) from None
        elif key in _KNOWN:
            product[key] = value
        else:
            attributes[key] = value
    if attributes:
        base = product.get("attributes")
        product["attributes"] = {**attributes, **(base if isinstance(base, dict) else {})}
    return product


def _csv_number(value: str, index: int, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ProductError(f"Product {index}: {key} must be a number", index=index, field=key) from None


def parse_products(raw: list[Any]) -> list[Product]:
    """Validate every product; ids must be unique within the import.

    Raises:
        ProductError: the first bad product, naming its index and field.
    """
    seen: set[str] = set()
    products = []
    for index, item in enumerate(raw):
        product = _product(item, index)
        if product.id in seen:
            raise ProductError(f"Product {index}: id {product.id!r} appears twice", index=index, field="id")
        seen.add(product.id)
        products.append(product)
    return products


def _text(item: dict[str, Any], key: str, index: int, *, required: bool = False) -> str | None:
    value = item.get(key)
    if value is None:
        if required:
            raise ProductError(f"Product {index}: {key} is required", index=index, field=key)
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str):
        raise ProductError(f"Product {index}: {key} must be a string", index=index, field=key)
    value = value.strip()
    if required and not value:
        raise ProductError(f"Product {index}: {key} must not be empty", index=index, field=key)
    if len(value) > _TEXT_FIELDS[key]:
        raise ProductError(f"Product {index}: {key} is over {_TEXT_FIELDS[key]} characters", index=index, field=key)
    return value or None


def _strings(item: dict[str, Any], key: str, index: int) -> list[str] | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProductError(f"Product {index}: {key} must be a list of strings", index=index, field=key)
    cleaned = [v.strip() for v in value if v.strip()]
    if len(cleaned) > _MAX_ITEMS or any(len(v) > _MAX_ITEM_CHARS for v in cleaned):
        raise ProductError(
            f"Product {index}: {key} may hold {_MAX_ITEMS} items of {_MAX_ITEM_CHARS} characters",
            index=index,
            field=key,
        )
    return cleaned


def _number(item: dict[str, Any], key: str, index: int) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProductError(f"Product {index}: {key} must be a non-negative number", index=index, field=key)
    return float(value)


def _attributes(item: dict[str, Any], index: int) -> dict[str, Any] | None:
    value = item.get("attributes")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in value.items()
    ):
        raise ProductError(
            f"Product {index}: attributes must be an object of strings, numbers or booleans",
            index=index,
            field="attributes",
        )
    return dict(value)


def _product(item: Any, index: int) -> Product:
    if not isinstance(item, dict):
        raise ProductError(f"Product {index}: must be an object", index=index)
    unknown = sorted(set(item) - _KNOWN)
    if unknown:
        raise ProductError(f"Product {index}: unknown field {unknown[0]!r}", index=index, field=unknown[0])
    product_id = _text(item, "id", index, required=True)
    name = _text(item, "name", index, required=True)
    assert product_id is not None and name is not None  # noqa: S101 -- required above
    price = _number(item, "price", index)
    stock_value = _number(item, "stock", index)
    if stock_value is not None and not stock_value.is_integer():
        raise ProductError(f"Product {index}: stock must be a whole number", index=index, field="stock")
    stock = None if stock_value is None else int(stock_value)
    data: dict[str, Any] = {"id": product_id, "name": name}
    for key in ("description", "category", "currency", "imageUrl"):
        text = _text(item, key, index)
        if text is not None:
            data[key] = text
    if price is not None:
        data["price"] = price
    for key in LIST_FIELDS:
        values = _strings(item, key, index)
        if values is not None:
            data[key] = values
    if stock is not None:
        data["stock"] = stock
    attributes = _attributes(item, index)
    if attributes is not None:
        data["attributes"] = attributes
    return Product(id=product_id, name=name, category=data.get("category"), price=price, stock=stock, data=data)


def search_text(product: Product) -> str:
    """What the full-text index reads: name, category, description, tags, colours, attribute values."""
    data = product.data
    parts = [product.name, data.get("category") or "", data.get("description") or ""]
    parts += data.get("tags", []) + data.get("colors", [])
    parts += [str(v) for v in (data.get("attributes") or {}).values() if isinstance(v, str)]
    return "\n".join(part for part in parts if part)


def embedding_text(product: Product) -> str:
    """What the embedding model reads: the same fields, name and category first (the model reads 256 tokens)."""
    data = product.data
    head = product.name if not product.category else f"{product.name} ({product.category})"
    parts = [head, data.get("description") or ""]
    extra = data.get("tags", []) + data.get("colors", [])
    if extra:
        parts.append(", ".join(extra))
    return ". ".join(part for part in parts if part)
