"""What every scheduling plugin is written against: the Filter, Scorer and Picker
protocols, the candidates and cycle they see (:mod:`.interfaces`), and how a plugin is
configured (:mod:`.plugin_config`). Plugins import only this; the registry, profiles and
scheduler in the package above assemble them."""
