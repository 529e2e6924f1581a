"""Colour maths in numpy, shared by the gateway, the training code and the benchmarks (no torch).

* `lab`        sRGB <-> CIE Lab (D65), checked against scikit-image
* `ab_decode`  annealed mean of the 313-bin ab distribution; L and ab resizing
* `hue_chroma` Larsson16's hue/chroma decodes
* `hints`      colour hints -> SIGGRAPH17's ab_hint and hint_mask tensors
* `suggest`    colour suggestions at a pixel from SIGGRAPH17's 529-bin distribution
* `quality`    PSNR (8-bit and float images) and the SR protocol's PSNR on Y: the one home of both
"""
