"""Plugins: manifests, discovery with trust checks, and the protocol v2 envelopes.

``manifest`` parses one manifest.yaml; ``discovery`` walks the plugin roots (the only
module here that touches the disk beyond reading a manifest) and judges trust with a pure
function over stat facts; ``protocol`` builds requests and decodes responses; ``inventory``
joins discovery with the config for ``plugin list`` and ``doctor``.

Nothing is re-exported here so that importing ``ductile.plugins.protocol`` on the spawn
path does not drag in YAML and the filesystem walk.
"""
