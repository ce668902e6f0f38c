"""One module or package per convolution algorithm (naive, im2col, fft, winograd).

Each exposes ``forward(x, w, args, out, bias=None)``: x, w and the preallocated out in the
caller's layout, ``bias`` added when given. naive, im2col and fft always give the exact
result and return None; winograd returns False when some output is not finite and the
caller must recompute the call. ``backward(grad_y, x, w, args, grad_x, grad_w)`` fills
the gradients that are not None; winograd's returns (ok_x, ok_w) likewise.
"""
