"""Separation in-process: a model loaded once (an engine), the song read as a stream, each stem encoded as it comes.

engine.py    what every engine offers its callers (Separator), load_separator, ModelUnavailable
demucs.py    the Demucs engine: apply_model's chunks and crossfade, computed chunk by chunk and emitted as they finish
spleeter.py  the Spleeter engine: its 2-stem U-Nets on an STFT (the bundled real model)
roformer.py  the RoFormer engine: published band-split / mel-band checkpoints, streamed chunk by chunk
roformer_nets.py  the RoFormer networks, laid out key for key as the published checkpoints
song.py      a song file at the model's rate, read block by block (SongStream, StreamResampler)
encoders.py  the stems' encoders, fed as blocks come (StemEncoders, StemSink)
devices.py   CPUs, devices and threads (cpu_budget, torch_threads, idle_priority)
files.py     one song file into stem files, with a report of where the time went (separate_file, SeparationReport)
"""

from .devices import cpu_budget, idle_priority, pick_device, torch_threads
from .encoders import ENCODER_QUEUE, StemEncoders, StemSink, encoding_threads
from .engine import Emit, Inference, ModelUnavailable, Progress, Reading, Separator, WholeSong, load_separator, separate_all
from .files import SeparationReport, separate_file
from .song import SongStream, StreamResampler, load_song

__all__ = [
    "ENCODER_QUEUE",
    "Emit",
    "Inference",
    "ModelUnavailable",
    "Progress",
    "Reading",
    "SeparationReport",
    "Separator",
    "SongStream",
    "StemEncoders",
    "StemSink",
    "StreamResampler",
    "WholeSong",
    "cpu_budget",
    "encoding_threads",
    "idle_priority",
    "load_separator",
    "load_song",
    "pick_device",
    "separate_all",
    "separate_file",
    "torch_threads",
]
