"""Who made an output: the General Equipment attributes (PS3.3 C.7.5.1) and the SR device
observer (TID 1004) describing the node, taken from the output config."""
from __future__ import annotations

from dataclasses import dataclass

from config.schema import OutputConfig

#: ManufacturerModelName of every output: the node itself.
MODEL_NAME = "mmedagent-node"
#: DeviceSerialNumber is Type 1 in the Enhanced General Equipment module (PS3.3 C.7.5.2); the node
#: is software, so its "serial number" is a fixed label rather than a hardware serial.
SERIAL_NUMBER = "mmedagent-node"
#: ContentLabel (CS, PS3.3 C.10.9) of SEG outputs.
CONTENT_LABEL = "MMEDAGENT"


@dataclass(frozen=True)
class Equipment:
    manufacturer: str
    model_name: str
    software_versions: str
    serial_number: str

    @classmethod
    def from_config(cls, output_cfg: OutputConfig) -> Equipment:
        return cls(
            manufacturer=output_cfg.manufacturer,
            model_name=MODEL_NAME,
            software_versions=output_cfg.pipeline_version,
            serial_number=SERIAL_NUMBER,
        )
