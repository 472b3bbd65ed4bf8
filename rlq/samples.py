"""`Sample`, one image and its labels: what the dataset parsers (`rlq.data`) make and the attribute files
(`rlq.attributes`) label, in a module of its own so that each of the two can import it without the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One image and its labels.

    `key` is the image key the authors' attribute CSVs use (pose clusters,
    faulty masks); `pid_key` is the identity as written in the data (the ID
    column of the gender CSVs). `gender` and `pose` stay -1 until
    `rlq.attributes.attach_attributes` fills them.
    """

    path: str
    pid: int
    camid: int
    clothes_id: int
    key: str
    pid_key: str
    gender: int = -1
    pose: int = -1
