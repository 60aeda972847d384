"""Fleet learning: gateways improve one detector model together with Flower, raw data never leaves a site.

Each gateway runs a Flower client (:mod:`appliance.fleet.client`) that trains the
detector's scikit-learn autoencoder on its own normal windows; a server
(:mod:`appliance.fleet.server`) aggregates the weights with FedAvg or FedProx,
optionally with central differential privacy (client-side clipping, Gaussian
noise on the aggregate), and writes the result as an ordinary model bundle that
the signed release path (``appliance release add/publish``) ships and each
gateway's shadow run accepts or refuses (``docs/fleet.md``).

``flwr`` is an optional extra (``pip install .[fleet]``): only ``client``,
``server`` and the commands that run them import it, and nothing on the live
scoring path imports this package.
"""
