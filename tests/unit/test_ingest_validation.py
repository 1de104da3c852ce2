"""Record validation of the ingestion API, pure: schemas, telemetry records, frames and buffers."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.errors import APIError, ErrCode
from sluicegate.services.ingest.validation import (
    AUDIO_FORMATS,
    IMAGE_FORMATS,
    Schema,
    check_media,
    check_records,
    parse_schema,
    timestamp_us,
)
from tests.seeds import IOT_SENSORS_V1

#: 2026-01-01T00:00:00Z in microseconds.
NEW_YEAR_US = 1_767_225_600_000_000
STAMP = "2026-01-01T00:00:00Z"


def iot() -> Schema:
    return parse_schema(IOT_SENSORS_V1)


def reading(temperature: Any = 21.5, humidity: Any = 40.0, timestamp: Any = STAMP) -> dict[str, Any]:
    return {"timestamp": timestamp, "values": {"temperature": temperature, "humidity": humidity}}


def one_field(kind: str, **extra: Any) -> Schema:
    return parse_schema({"schemaName": "s", "fields": [{"name": "v", "type": kind, "required": True, **extra}]})


def schema_problems(definition: Any) -> list[dict[str, str]]:
    with pytest.raises(APIError) as caught:
        parse_schema(definition)
    assert caught.value.code == ErrCode.INVALID_ARGUMENT
    assert caught.value.status == 400
    assert caught.value.message == "Invalid schema"
    problems: list[dict[str, str]] = caught.value.details["fields"]
    return problems


# -- parse_schema --------------------------------------------------------------------------


def test_the_seed_schema_compiles_to_its_fields() -> None:
    schema = iot()
    assert (schema.name, schema.version) == ("iot-sensors-v1", "1.0.0")
    compiled = [(f.name, f.type, f.required, f.minimum, f.maximum) for f in schema.fields]
    assert compiled == [
        ("timestamp", "datetime", True, None, None),
        ("temperature", "float", True, -50.0, 150.0),
        ("humidity", "float", True, 0.0, 100.0),
    ]


def test_schema_version_defaults_and_type_aliases_are_normalised() -> None:
    fields = [
        {"name": "a", "type": "Double"},
        {"name": "b", "type": "INTEGER"},
        {"name": "c", "type": "bool"},
        {"name": "d", "type": "timestamp"},
        {"name": "e", "type": "str"},
        {"name": "f", "type": "number", "validation": {"min": "1", "max": 2}},
    ]
    schema = parse_schema({"schemaName": "aliases", "fields": fields})
    assert schema.version == "1.0.0"
    assert [f.type for f in schema.fields] == ["float", "int", "boolean", "datetime", "string", "float"]
    assert [f.required for f in schema.fields] == [False] * 6
    assert (schema.fields[5].minimum, schema.fields[5].maximum) == (1.0, 2.0)


def test_every_problem_of_a_schema_is_listed() -> None:
    problems = schema_problems(
        {
            "schemaName": "",
            "schemaVersion": 2,
            "fields": [
                {"type": "float"},
                {"name": "", "type": "float"},
                {"name": "a", "type": "decimal"},
                {"name": "b", "type": "float", "validation": {"min": "low"}},
                {"name": "c", "type": "int", "validation": {"max": [1]}},
                {"name": "d", "type": "int", "validation": {"min": True}},
                "not an object",
                {"name": "ok", "type": "float"},
            ],
        }
    )
    assert [p["field"] for p in problems] == [
        "body.schemaName",
        "body.schemaVersion",
        "body.fields.0",
        "body.fields.1",
        "body.fields.2.type",
        "body.fields.3.validation",
        "body.fields.4.validation",
        "body.fields.5.validation",
        "body.fields.6",
    ]
    assert all(p["type"] == "value_error" for p in problems)
    assert problems[2]["message"] == "each field needs a name"
    assert problems[4]["message"].startswith("unknown type 'decimal'; use one of [")
    assert problems[5]["message"] == "min and max must be numbers"


@pytest.mark.parametrize("fields", [[], None, "timestamp", {"name": "x"}])
def test_a_schema_needs_a_non_empty_list_of_fields(fields: Any) -> None:
    definition = {"schemaName": "s"} if fields is None else {"schemaName": "s", "fields": fields}
    assert schema_problems(definition) == [
        {"field": "body.fields", "message": "required, a non-empty list", "type": "value_error"}
    ]


def test_a_schema_name_is_required_and_bounded() -> None:
    for name in (None, "", "x" * 201, 7):
        definition: dict[str, Any] = {"fields": [{"name": "a", "type": "int"}]}
        if name is not None:
            definition["schemaName"] = name
        assert [p["field"] for p in schema_problems(definition)] == ["body.schemaName"]
    assert parse_schema({"schemaName": "x" * 200, "fields": [{"name": "a", "type": "int"}]}).name == "x" * 200


def test_a_schema_that_is_not_an_object_is_refused() -> None:
    assert schema_problems(["schemaName"]) == [{"field": "body", "message": "must be an object"}]


# -- Schema.check --------------------------------------------------------------------------


def test_valid_readings_have_no_problems() -> None:
    records = [reading(), reading("-50", "100"), reading(150, 0), reading(" 21.5 ", 3)]
    assert iot().check(records, telemetry=True) == []


def test_the_seed_invalid_record_is_reported_as_the_seed_shows() -> None:
    records = [reading() for _ in range(43)]
    records[42] = reading(temperature="invalid")
    assert iot().check(records, telemetry=True) == [
        {
            "recordIndex": 42,
            "field": "temperature",
            "value": "invalid",
            "expectedType": "float",
            "message": "Cannot parse 'invalid' as float",
        }
    ]


def test_a_missing_required_field_is_reported_once_per_record() -> None:
    records = [
        {"timestamp": STAMP, "values": {"temperature": 20}},
        {"values": {"temperature": 20, "humidity": 10}},
        {"timestamp": STAMP, "temperature": 20, "humidity": 10},  # not under values
        {"timestamp": STAMP, "values": ["not", "an", "object"]},
    ]
    assert [(p["recordIndex"], p["field"], p["value"], p["message"]) for p in iot().check(records, telemetry=True)] == [
        (0, "humidity", None, "Field is required"),
        (1, "timestamp", None, "Field is required"),
        (2, "temperature", None, "Field is required"),
        (2, "humidity", None, "Field is required"),
        (3, "temperature", None, "Field is required"),
        (3, "humidity", None, "Field is required"),
    ]


def test_optional_fields_may_be_absent_but_are_checked_when_present() -> None:
    schema = parse_schema({"schemaName": "s", "fields": [{"name": "speed", "type": "float"}]})
    assert schema.check([{"values": {}}, {"values": {"speed": 3}}], telemetry=True) == []
    [problem] = schema.check([{"values": {"speed": "fast"}}], telemetry=True)
    assert problem["message"] == "Cannot parse 'fast' as float"


def test_every_bad_record_and_every_bad_field_is_reported() -> None:
    records = [
        reading(temperature="hot"),
        reading(),
        reading(temperature=-50.5, humidity=100.01),
        reading(timestamp="soon", humidity=None),
        "not a record",
    ]
    problems = iot().check(records, telemetry=True)
    assert problems == [
        {
            "recordIndex": 0,
            "field": "temperature",
            "value": "hot",
            "expectedType": "float",
            "message": "Cannot parse 'hot' as float",
        },
        {
            "recordIndex": 2,
            "field": "temperature",
            "value": -50.5,
            "expectedType": "float",
            "message": "Value -50.5 is below the minimum -50.0",
        },
        {
            "recordIndex": 2,
            "field": "humidity",
            "value": 100.01,
            "expectedType": "float",
            "message": "Value 100.01 is above the maximum 100.0",
        },
        {
            "recordIndex": 3,
            "field": "timestamp",
            "value": "soon",
            "expectedType": "datetime",
            "message": "Cannot parse 'soon' as datetime",
        },
        {
            "recordIndex": 3,
            "field": "humidity",
            "value": None,
            "expectedType": "float",
            "message": "Cannot parse None as float",
        },
        *(
            {
                "recordIndex": 4,
                "field": name,
                "value": None,
                "expectedType": kind,
                "message": "Field is required",
            }
            for name, kind in (("timestamp", "datetime"), ("temperature", "float"), ("humidity", "float"))
        ),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-50, None),
        ("-50.0", None),
        (150.0, None),
        ("1e2", None),
        (-50.01, "Value -50.01 is below the minimum -50.0"),
        ("151", "Value '151' is above the maximum 150.0"),
        (True, "Cannot parse True as float"),
        ("nan", "Cannot parse 'nan' as float"),
        ("inf", "Cannot parse 'inf' as float"),
        ([1.0], "Cannot parse [1.0] as float"),
        ({"v": 1}, "Cannot parse {'v': 1} as float"),
        ("", "Cannot parse '' as float"),
    ],
)
def test_float_fields_take_numbers_and_numeric_strings_within_bounds(value: Any, message: str | None) -> None:
    problems = iot().check([reading(temperature=value)], telemetry=True)
    assert [p["message"] for p in problems] == ([] if message is None else [message])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (7, None),
        (7.0, None),
        ("7", None),
        ("-3", None),
        (7.5, "Cannot parse 7.5 as int"),
        ("7.5", "Cannot parse '7.5' as int"),
        (False, "Cannot parse False as int"),
        (11, "Value 11 is above the maximum 10.0"),
        (-4, "Value -4 is below the minimum -3.0"),
    ],
)
def test_int_fields_refuse_fractions(value: Any, message: str | None) -> None:
    schema = one_field("int", validation={"min": -3, "max": 10})
    problems = schema.check([{"v": value}], telemetry=False)
    assert [p["message"] for p in problems] == ([] if message is None else [message])
    if problems:
        assert problems[0]["expectedType"] == "int"


@pytest.mark.parametrize(
    ("kind", "good", "bad", "message"),
    [
        (
            "datetime",
            ["2026-01-01T00:00:00Z", "2026-01-01T02:00:00+02:00", "2026-01-01"],
            17,
            "Cannot parse 17 as datetime",
        ),
        ("datetime", [STAMP], "yesterday", "Cannot parse 'yesterday' as datetime"),
        ("string", ["", "text"], 5, "Cannot parse 5 as string"),
        ("boolean", [True, False], "true", "Cannot parse 'true' as boolean"),
        ("boolean", [True], 1, "Cannot parse 1 as boolean"),
        ("object", [{}, {"a": [1]}], [1], "Cannot parse [1] as object"),
        ("array", [[], [{"a": 1}]], {"a": 1}, "Cannot parse {'a': 1} as array"),
        ("array", [[1]], "[1]", "Cannot parse '[1]' as array"),
    ],
)
def test_each_type_accepts_its_values_and_names_what_it_refuses(
    kind: str, good: list[Any], bad: Any, message: str
) -> None:
    schema = one_field(kind)
    assert schema.check([{"v": value} for value in good], telemetry=False) == []
    assert schema.check([{"v": bad}], telemetry=False) == [
        {"recordIndex": 0, "field": "v", "value": bad, "expectedType": kind, "message": message}
    ]


def test_string_bounds_are_lengths() -> None:
    schema = one_field("string", validation={"min": 2, "max": 4})
    assert schema.check([{"v": "ab"}, {"v": "abcd"}], telemetry=False) == []
    assert [p["message"] for p in schema.check([{"v": "a"}, {"v": "abcde"}], telemetry=False)] == [
        "String is shorter than 2 characters",
        "String is longer than 4 characters",
    ]


def test_outside_telemetry_every_field_is_read_from_the_record_itself() -> None:
    schema = iot()
    flat = {"timestamp": STAMP, "temperature": 20, "humidity": 30}
    assert schema.check([flat], telemetry=False) == []
    assert [p["field"] for p in schema.check([reading()], telemetry=False)] == ["temperature", "humidity"]
    assert [p["message"] for p in schema.check([None], telemetry=False)] == ["Field is required"] * 3


def test_long_values_are_truncated_in_the_report() -> None:
    long = "x" * 150
    [problem] = iot().check([reading(temperature=long)], telemetry=True)
    assert problem["value"] == "x" * 100 + "..."
    exact = "y" * 100
    [problem] = iot().check([reading(temperature=exact)], telemetry=True)
    assert problem["value"] == exact


def test_long_values_are_not_echoed_whole_in_the_message() -> None:
    long = "x" * 10_000
    [problem] = iot().check([reading(temperature=long)], telemetry=True)
    assert len(problem["message"]) < 300
    _, [stamp_problem] = check_records([{"timestamp": long}])
    assert len(stamp_problem["message"]) < 300


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("2026-01-01T00:00:00Z", NEW_YEAR_US),
        ("2026-01-01T00:00:00+00:00", NEW_YEAR_US),
        ("2026-01-01T01:00:00+01:00", NEW_YEAR_US),
        ("2025-12-31T19:00:00-05:00", NEW_YEAR_US),
        ("2026-01-01T05:30:00.250+05:30", NEW_YEAR_US + 250_000),
        ("2026-01-01T00:00:00", NEW_YEAR_US),  # naive: UTC
        ("2026-01-01", NEW_YEAR_US),
        ("2026-01-01T00:00:00.123Z", NEW_YEAR_US + 123_000),
        ("2026-01-01T00:00:00.999999Z", NEW_YEAR_US + 999_999),
        ("2026-06-15T12:34:56.789Z", 1_781_526_896_789_000),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.000001Z", 1),
        ("1969-12-31T23:59:59.999999Z", -1),
        # instants that a float computation (timestamp() * 1000) gets one millisecond wrong
        ("1987-05-10T10:40:21.915Z", 547_641_621_915_000),
        ("2039-01-12T23:59:04.595Z", 2_178_489_544_595_000),
        ("1952-09-30T02:38:27.386Z", -544_483_292_614_000),
    ],
)
def test_timestamp_us_gives_exact_microseconds(text: str, micros: int) -> None:
    assert timestamp_us(text) == micros


@pytest.mark.parametrize(
    "value",
    [None, "", "yesterday", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", 1767225600000, 1.5, ["2026-01-01"]],
)
def test_timestamp_us_refuses_what_is_not_an_iso_timestamp(value: Any) -> None:
    assert timestamp_us(value) is None


def test_timestamp_us_refuses_overlong_strings() -> None:
    padded = "2026-01-01T00:00:00.000000+00:00"
    assert timestamp_us(padded) == NEW_YEAR_US
    assert timestamp_us(padded + " " * (41 - len(padded))) is None


def test_check_records_gives_each_time_and_every_problem() -> None:
    records: list[Any] = [
        {"timestamp": "2026-01-01T00:00:01Z", "values": {}},
        {"timestamp": "2026-01-01T02:00:02+02:00"},
        {"timestamp": "2026-01-01T00:00:03"},
        {"timestamp": "invalid"},
        {"values": {"a": 1}},
        {"timestamp": None},
        {"timestamp": 1767225600},
        ["not", "an", "object"],
        "2026-01-01T00:00:00Z",
    ]
    times, problems = check_records(records)
    assert times == [NEW_YEAR_US + 1_000_000, NEW_YEAR_US + 2_000_000, NEW_YEAR_US + 3_000_000, 0, 0, 0, 0, 0, 0]
    assert problems == [
        {
            "recordIndex": 3,
            "field": "timestamp",
            "value": "invalid",
            "expectedType": "datetime",
            "message": "Cannot parse 'invalid' as datetime",
        },
        {
            "recordIndex": 4,
            "field": "timestamp",
            "value": None,
            "expectedType": "datetime",
            "message": "Field is required",
        },
        {
            "recordIndex": 5,
            "field": "timestamp",
            "value": None,
            "expectedType": "datetime",
            "message": "Field is required",
        },
        {
            "recordIndex": 6,
            "field": "timestamp",
            "value": 1767225600,
            "expectedType": "datetime",
            "message": "Cannot parse 1767225600 as datetime",
        },
        *(
            {
                "recordIndex": i,
                "field": "timestamp",
                "value": None,
                "expectedType": "datetime",
                "message": "Each record must be an object",
            }
            for i in (7, 8)
        ),
    ]


def test_check_records_of_valid_records_reports_nothing() -> None:
    assert check_records([]) == ([], [])
    assert check_records([{"timestamp": STAMP}]) == ([NEW_YEAR_US], [])


def test_a_long_invalid_timestamp_is_truncated_in_the_report() -> None:
    _, [problem] = check_records([{"timestamp": "9" * 120}])
    assert problem["value"] == "9" * 100 + "..."


# -- frames and buffers --------------------------------------------------------------------


def frame(**changes: Any) -> dict[str, Any]:
    return {"frameNumber": 0, "timestamp": STAMP, "imageData": "aGVsbG8=", "format": "jpeg", **changes}


def check_frames(items: list[Any]) -> tuple[list[int], list[dict[str, Any]]]:
    return check_media(items, data_field="imageData", number_field="frameNumber", formats=IMAGE_FORMATS)


def check_buffers(items: list[Any]) -> tuple[list[int], list[dict[str, Any]]]:
    return check_media(items, data_field="audioData", number_field="bufferNumber", formats=AUDIO_FORMATS)


def test_valid_frames_pass_with_their_times() -> None:
    frames = [
        frame(),
        frame(frameNumber=1, format="PNG", timestamp="2026-01-01T00:00:00.040Z", width=1920),
    ]
    assert check_frames(frames) == ([NEW_YEAR_US, NEW_YEAR_US + 40_000], [])
    assert {"jpeg", "jpg", "png", "webp", "gif", "bmp", "raw"} == IMAGE_FORMATS


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("aGVsbG8", "imageData is not valid base64"),  # missing padding
        ("aGVs bG8=", "imageData is not valid base64"),
        ("aGVsbG8=\n", "imageData is not valid base64"),
        ("not base64!", "imageData is not valid base64"),
        ("====", "imageData is not valid base64"),
        ("é", "imageData is not valid base64"),
    ],
)
def test_image_data_must_be_strict_base64(data: str, message: str) -> None:
    _, problems = check_frames([frame(imageData=data)])
    assert problems == [
        {"recordIndex": 0, "field": "imageData", "value": data, "expectedType": "base64", "message": message}
    ]


@pytest.mark.parametrize("data", [None, "", 42])
def test_image_data_is_required(data: Any) -> None:
    item = frame(imageData=data)
    if data is None:
        del item["imageData"]
    _, problems = check_frames([item])
    assert problems == [
        {
            "recordIndex": 0,
            "field": "imageData",
            "value": data,
            "expectedType": "string",
            "message": "Field is required",
        }
    ]


@pytest.mark.parametrize("kind", [None, "tiff", "", 3])
def test_frame_format_must_be_a_known_image_format(kind: Any) -> None:
    item = frame(format=kind)
    if kind is None:
        del item["format"]
    _, [problem] = check_frames([item])
    assert (problem["field"], problem["value"], problem["expectedType"]) == ("format", kind, "string")
    assert problem["message"] == f"Unknown format {kind!r}; use one of {sorted(IMAGE_FORMATS)}"


@pytest.mark.parametrize("number", [-1, 1.0, "3", True, None])
def test_frame_number_must_be_a_non_negative_integer(number: Any) -> None:
    _, [problem] = check_frames([frame(frameNumber=number)])
    assert problem == {
        "recordIndex": 0,
        "field": "frameNumber",
        "value": number,
        "expectedType": "int",
        "message": "frameNumber must be a non-negative integer",
    }


def test_every_problem_of_every_frame_is_reported_in_record_order() -> None:
    items: list[Any] = [
        frame(frameNumber=-2, imageData="%%", format="tiff", timestamp="later"),
        frame(),
        "not a frame",
        frame(frameNumber=3, format="gif"),
    ]
    times, problems = check_frames(items)
    assert times == [0, NEW_YEAR_US, 0, NEW_YEAR_US]
    assert [(p["recordIndex"], p["field"]) for p in problems] == [
        (0, "timestamp"),
        (0, "imageData"),
        (0, "format"),
        (0, "frameNumber"),
        (2, "timestamp"),
    ]
    assert problems[4]["message"] == "Each record must be an object"


def test_buffers_check_audio_data_buffer_numbers_and_audio_formats() -> None:
    good = {"bufferNumber": 0, "timestamp": STAMP, "audioData": "AAAA", "format": "WAV", "sampleRate": 48000}
    assert check_buffers([good, {**good, "bufferNumber": 1, "format": "opus"}]) == ([NEW_YEAR_US] * 2, [])
    bad = {"bufferNumber": -1, "timestamp": STAMP, "audioData": "A", "format": "jpeg"}
    _, problems = check_buffers([bad])
    assert [(p["field"], p["message"]) for p in problems] == [
        ("audioData", "audioData is not valid base64"),
        ("format", f"Unknown format 'jpeg'; use one of {sorted(AUDIO_FORMATS)}"),
        ("bufferNumber", "bufferNumber must be a non-negative integer"),
    ]
    _, [missing] = check_buffers([{**good, "audioData": None}])
    assert (missing["field"], missing["message"]) == ("audioData", "Field is required")
