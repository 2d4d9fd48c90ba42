# The compiled loop keeps the reference loop's contract: `_sealer.seal_python` documents it.
from vigil.nodes.logger._sealer import SealFn

seal: SealFn
