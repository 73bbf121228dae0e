"""The commands on top: live (window or headless), render, replay, export, bench, evaluate."""
