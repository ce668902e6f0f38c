"""One module per convolution algorithm. Each exposes ``forward(x, w, args, out)``
(x, w, out in the caller's layout, out preallocated, bias not applied)."""
