"""The second seed's media fields at session start: defaults, accepted values, and a 400 naming each bad field."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.errors import APIError, ErrCode
from sluicegate.services.media.config import (
    AudioConfig,
    Resolution,
    VideoConfig,
    parse_audio_config,
    parse_video_config,
)


def refusal(parse: Any, body: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as caught:
        parse(body)
    error = caught.value
    assert error.code is ErrCode.INVALID_ARGUMENT
    assert error.status == 400
    return error


def test_an_empty_body_gets_the_documented_defaults() -> None:
    assert parse_video_config({}) == VideoConfig(
        mode="keyframes",
        frame_interval=30,
        frame_rate_fps=None,
        resolution=None,
        compression_quality=85,
        scene_threshold=0.3,
    )
    assert parse_audio_config({}) == AudioConfig(
        mode="silence", silence_threshold_db=-40.0, min_segment_ms=1_000, max_segment_ms=30_000
    )


def test_the_seeds_example_bodies_parse() -> None:
    video = parse_video_config(
        {
            "frameExtractionMode": "keyframes",
            "frameRateFps": 30,
            "resolution": {"width": 1920, "height": 1080},
            "compressionQuality": 85,
        }
    )
    assert video.mode == "keyframes"
    assert video.frame_rate_fps == 30.0
    assert video.resolution == Resolution(1920, 1080)
    audio = parse_audio_config(
        {
            "segmentationMode": "silence",
            "silenceThresholdDb": -40,
            "minSegmentDurationMs": 1000,
            "maxSegmentDurationMs": 30000,
        }
    )
    assert audio == AudioConfig("silence", -40.0, 1000, 30000)


@pytest.mark.parametrize("mode", ["all-frames", "keyframes", "interval", "scene-changes"])
def test_every_extraction_mode_is_accepted(mode: str) -> None:
    assert parse_video_config({"frameExtractionMode": mode}).mode == mode


@pytest.mark.parametrize("mode", ["fixed-duration", "silence", "energy", "speech-detection"])
def test_every_segmentation_mode_is_accepted(mode: str) -> None:
    assert parse_audio_config({"segmentationMode": mode}).mode == mode


def test_null_fields_take_their_defaults_and_integral_floats_are_integers() -> None:
    assert parse_video_config({"frameExtractionMode": None, "resolution": None}) == VideoConfig()
    config = parse_video_config({"frameInterval": 10.0, "sceneThreshold": 1, "compressionQuality": 100})
    assert config.frame_interval == 10
    assert isinstance(config.frame_interval, int)
    assert config.scene_threshold == 1.0
    assert parse_audio_config({"minSegmentDurationMs": 500, "maxSegmentDurationMs": 500}).min_segment_ms == 500


def test_a_portrait_resolution_within_the_pixel_bound_is_accepted() -> None:
    assert parse_video_config({"resolution": {"width": 4320, "height": 7680}}).resolution == Resolution(4320, 7680)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"frameExtractionMode": "every-frame"}, "frameExtractionMode"),
        ({"frameExtractionMode": 3}, "frameExtractionMode"),
        ({"frameInterval": 0}, "frameInterval"),
        ({"frameInterval": 2.5}, "frameInterval"),
        ({"frameInterval": "10"}, "frameInterval"),
        ({"frameInterval": True}, "frameInterval"),
        ({"frameRateFps": 0}, "frameRateFps"),
        ({"frameRateFps": -30}, "frameRateFps"),
        ({"frameRateFps": 5000}, "frameRateFps"),
        ({"frameRateFps": "30"}, "frameRateFps"),
        ({"frameRateFps": float("nan")}, "frameRateFps"),
        ({"resolution": "1920x1080"}, "resolution"),
        ({"resolution": {"width": 1920}}, "resolution.height"),
        ({"resolution": {"height": 1080}}, "resolution.width"),
        ({"resolution": {"width": 0, "height": 1080}}, "resolution.width"),
        ({"resolution": {"width": 1920, "height": -1}}, "resolution.height"),
        ({"resolution": {"width": 7681, "height": 100}}, "resolution.width"),
        ({"resolution": {"width": 1920.5, "height": 1080}}, "resolution.width"),
        ({"resolution": {"width": 7680, "height": 7680}}, "resolution"),
        ({"compressionQuality": 0}, "compressionQuality"),
        ({"compressionQuality": 101}, "compressionQuality"),
        ({"compressionQuality": "high"}, "compressionQuality"),
        ({"sceneThreshold": -0.1}, "sceneThreshold"),
        ({"sceneThreshold": 1.5}, "sceneThreshold"),
        ({"sceneThreshold": False}, "sceneThreshold"),
    ],
)
def test_each_bad_video_field_is_a_400_naming_it(body: dict[str, Any], field: str) -> None:
    error = refusal(parse_video_config, body)
    assert error.details["field"] == field
    assert field in error.message
    assert error.body()["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"segmentationMode": "vad"}, "segmentationMode"),
        ({"segmentationMode": ["silence"]}, "segmentationMode"),
        ({"silenceThresholdDb": 3}, "silenceThresholdDb"),
        ({"silenceThresholdDb": -121}, "silenceThresholdDb"),
        ({"silenceThresholdDb": "-40"}, "silenceThresholdDb"),
        ({"silenceThresholdDb": float("-inf")}, "silenceThresholdDb"),
        ({"minSegmentDurationMs": 0}, "minSegmentDurationMs"),
        ({"minSegmentDurationMs": 10.5}, "minSegmentDurationMs"),
        ({"maxSegmentDurationMs": -1}, "maxSegmentDurationMs"),
        ({"maxSegmentDurationMs": 600_001}, "maxSegmentDurationMs"),
        ({"maxSegmentDurationMs": 500}, "maxSegmentDurationMs"),
        ({"minSegmentDurationMs": 40_000}, "minSegmentDurationMs"),
        ({"minSegmentDurationMs": 2000, "maxSegmentDurationMs": 1000}, "maxSegmentDurationMs"),
    ],
)
def test_each_bad_audio_field_is_a_400_naming_it(body: dict[str, Any], field: str) -> None:
    error = refusal(parse_audio_config, body)
    assert error.details["field"] == field
    assert field in error.message


def test_an_unknown_mode_lists_the_allowed_ones() -> None:
    error = refusal(parse_video_config, {"frameExtractionMode": "all"})
    for mode in ("all-frames", "keyframes", "interval", "scene-changes"):
        assert mode in error.message
    error = refusal(parse_audio_config, {"segmentationMode": "words"})
    for mode in ("fixed-duration", "silence", "energy", "speech-detection"):
        assert mode in error.message


def test_fields_of_the_other_kind_are_ignored() -> None:
    # A video session's body may carry audio fields and the reverse: each parser reads its own.
    assert parse_video_config({"segmentationMode": "nonsense"}) == VideoConfig()
    assert parse_audio_config({"frameExtractionMode": "nonsense"}) == AudioConfig()
