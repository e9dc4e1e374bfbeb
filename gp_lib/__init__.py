"""Golden Path Lab: find out why a real-time AI chat backend drops WebSocket sessions with 1011.

Importing the package makes `rfc3987_syntax` unimportable in this process.
jsonschema (imported by nbformat, so by papermill, scrapbook and nbconvert)
imports it, when installed, for its `iri` format checks, and it builds some
thirty Earley parsers at import: over 2 s of CPU in every batch process and
notebook worker (jsonschema issue 1428). No notebook schema uses the `iri`
formats; without the module jsonschema simply does not check them.
"""

import sys

sys.modules.setdefault("rfc3987_syntax", None)
