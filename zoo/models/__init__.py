"""One module per architecture; importing this package registers every zoo model (in listing order)."""

from zoo.models import cnn, lenet, resnet, lstm, dcgan, autoencoder, mlp  # noqa: F401,I001
