"""A speech-container emulator speaking the Azure Speech SDK's websocket protocol (USP).

Tests and benchmarks drive the real SDK against it; users try batchscribe without Azure.
"""

from batchscribe.emulator.faults import Fault, FaultMode
from batchscribe.emulator.server import Emulator, EmulatorConfig
from batchscribe.emulator.transcribers import duration_text

__all__ = ["Emulator", "EmulatorConfig", "Fault", "FaultMode", "duration_text"]
