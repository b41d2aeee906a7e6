"""R2 violation: one unbounded loop."""


def serve(queue):
    handled = 0
    while True:
        item = queue.get()
        if item is None:
            break
        handled += 1
    return handled
