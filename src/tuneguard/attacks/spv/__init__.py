"""SPV-MIA's parts: self-prompt reference data (selfprompt), the reference model (reference), probabilistic
variation (variation) and the pipeline that joins them (pipeline)."""
