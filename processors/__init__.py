"""Media I/O, frame samplers, frame preprocessing and synthetic media (no torchvision)."""

from videoadapt.processors.adaptive_sampling import AdaptiveSampler, AvsPlan, make_sampler
from videoadapt.processors.audio import AudioMetadata, clip_audio, clip_start_times, load_audio
from videoadapt.processors.errors import MediaError
from videoadapt.processors.image_processing import FramePreprocessor
from videoadapt.processors.sampling import FpsSampler, FrameSampler, TimestampSampler, UniformSampler, VideoIndex
from videoadapt.processors.shot_detection import ContentDetector, ShotDetector, TransNetV2Detector
from videoadapt.processors.video_io import VideoMetadata, load_video, probe_video


__all__ = [
    "AdaptiveSampler",
    "AudioMetadata",
    "AvsPlan",
    "ContentDetector",
    "FpsSampler",
    "FramePreprocessor",
    "FrameSampler",
    "MediaError",
    "ShotDetector",
    "TimestampSampler",
    "TransNetV2Detector",
    "UniformSampler",
    "VideoIndex",
    "VideoMetadata",
    "clip_audio",
    "clip_start_times",
    "load_audio",
    "load_video",
    "make_sampler",
    "probe_video",
]
