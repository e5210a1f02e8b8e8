"""Writes the reference pages generated from flatrep's catalogues into the site (run by the
mkdocs-gen-files plugin at every build; ``flatrep.pipeline.reference_pages`` renders them)."""

import mkdocs_gen_files

from flatrep.pipeline import reference_pages

for path, text in reference_pages.pages().items():
    with mkdocs_gen_files.open(path, "w") as page:
        page.write(text)
