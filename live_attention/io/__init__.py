"""Input and output beside the library: capture sources and the capture thread, video files, recording."""
