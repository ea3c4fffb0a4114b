"""The Flux streaming benchmark behind bench/bench_flux_stream.py.

harness: ComfyUI in-process and the Bench (model, conditioning, timed sampling, VRAM counters).
plans:   the StreamRequest whose plan streams closest to a target number of bytes.
report:  JSON lines, the engine's telemetry per sampling run, the summary table.
cases:   the resident, native and DisTorch cases, run in order (imports the project: load it last).
"""
