"""The study cube: what is measured, how a run is measured, and the NetCDF files.

``variables`` (the catalogue: every variable's dims, formula and paper equation),
``measuring`` (every checkpoint of a run into one Dataset), ``netcdf`` (writing, checking and
combining the files) and ``views`` (run-level values and the healthy runs, shared by the
analysis).
"""
