"""Examples the seed documents give, shared by the tests that use them."""

from __future__ import annotations

from typing import Any

#: The second seed's schema example, exactly.
IOT_SENSORS_V1: dict[str, Any] = {
    "schemaName": "iot-sensors-v1",
    "schemaVersion": "1.0.0",
    "fields": [
        {"name": "timestamp", "type": "datetime", "required": True},
        {"name": "temperature", "type": "float", "required": True, "validation": {"min": -50.0, "max": 150.0}},
        {"name": "humidity", "type": "float", "required": True, "validation": {"min": 0.0, "max": 100.0}},
    ],
}
