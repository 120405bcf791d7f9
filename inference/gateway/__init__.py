"""The bundled AI gateway: keys, limits, a works queue, upstream engines."""
