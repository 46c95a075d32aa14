"""Lookup of named presets (configs, recipes) with a helpful error."""


def lookup(table, name, kind):
  """`table[name]`, or a ValueError listing the known names of `kind`."""
  try:
    return table[name]
  except KeyError:
    raise ValueError(f'Unknown {kind} {name!r}; known {kind}s: '
                     f'{sorted(table)}.') from None
