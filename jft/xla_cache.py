"""XLA's persistent compilation cache for jft's commands.

A program compiled once is read back from disk by every later run with the same program and
settings (a resumed run, the next fine-tuning of the same shapes, eval, predict), instead of
compiled again: on a CPU the first step of `jft pretrain` / `jft finetune` comes 3-4x sooner
(benchmarks/compile_cache.py). The cache holds compiled programs only, no data or weights; jax
keys each entry by the program, the compiler and its flags, and the devices.
"""

import os
from pathlib import Path

import jax

ENV = "JFT_XLA_CACHE"  # a directory, or "off"
MAX_BYTES = 4 << 30  # least recently used entries go past this


def default_directory() -> Path:
    """$XDG_CACHE_HOME/jft/xla, or ~/.cache/jft/xla."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jft" / "xla"


def enable_compilation_cache() -> str | None:
    """Points JAX's persistent compilation cache at $JFT_XLA_CACHE (default: default_directory();
    "off": no cache), unless JAX's own setting (JAX_COMPILATION_CACHE_DIR) names one. Returns the
    directory in use, or None. A directory that cannot be made leaves compiling as it was."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    setting = os.environ.get(ENV, "")
    if setting == "off":
        return None
    directory = Path(setting).expanduser() if setting else default_directory()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if jax.config.jax_compilation_cache_max_size == -1:  # jax's default: unbounded
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return str(directory)
