"""`unime demo`: the whole UniME-V2 method (and Embed-RL when enabled) end to end on the embedded
default — tiny models of the real architectures and the generated demo world."""
