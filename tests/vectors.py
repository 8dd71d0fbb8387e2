"""The test vectors of shared/spec/scn1-cover-node-frames.md, verbatim."""

VECTORS = {
    "report": "A5 5A 1F 01 01 00 C0 FF EE 00 01 00 01 04 FF 6A 00 1E 02 02 07 3A 03 02 0E 1C "
    "04 02 00 D7 06 02 9F 07 0E AE",
    "event_open": "A5 5A 18 01 02 00 C0 FF EE 00 02 01 07 07 01 00 00 00 03 11 A8 01 04 11 A8 "
    "FF 92 88 8D",
    "heartbeat": "A5 5A 0D 01 03 00 00 00 2A FF FF 04 03 02 0C DA CC 03",
    "boot": "A5 5A 12 01 04 12 34 AB CD 00 00 00 08 04 02 01 02 05 09 01 02 C9 BD",
    "report_unknown_tag": "A5 5A 12 01 01 00 C0 FF EE 00 03 00 7F 03 01 02 03 02 02 01 A4 50 F2",
    "report_gas_pressure": "A5 5A 1B 01 01 00 00 01 01 00 4D 00 05 03 01 00 7D 05 03 02 00 1F "
    "0A 02 00 B7 0B 02 00 28 09 4B",
}


def vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])
