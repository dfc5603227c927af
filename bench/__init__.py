"""scripts/bench: what aijobs costs over bare arq, bare Starlette and SAQ, measured side by side in one run."""
