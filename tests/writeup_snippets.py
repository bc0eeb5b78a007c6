"""Code quoted from the write-ups the examples grew from, bugs included, for the tests that need it."""

# The MNIST write-up's clip helper: the sum consumes the parameter generator, so the loop after it
# sees no parameters and clip_grad_norm_ clips nothing.
CLIP_HELPER = '''\
def gradient_clipping(model, max_norm=1.0):
    parameters = model.parameters()
    nparams = sum([np.prod(p.size()) for p in parameters])
    if nparams > 1e6:
        return
    gradients = []
    for p in parameters:
        if p.grad is not None:
            gradients.append(p.grad)
    norm = torch.nn.utils.clip_grad_norm_(gradients, max_norm)
    return norm
'''
