"""The threads and the one frame loop: inference worker, live session, controller, frame loop, batch runs."""
