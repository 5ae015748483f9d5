"""pytorch-grad-cam's ROAD metrics need a noisy linear imputer camkit does not have yet."""

from camkit.compat._shared import not_landed

__all__ = [
    "NoisyLinearImputer",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
]

NoisyLinearImputer = not_landed("pytorch-grad-cam", "NoisyLinearImputer")
ROADMostRelevantFirst = not_landed("pytorch-grad-cam", "ROADMostRelevantFirst")
ROADLeastRelevantFirst = not_landed("pytorch-grad-cam", "ROADLeastRelevantFirst")
ROADMostRelevantFirstAverage = not_landed("pytorch-grad-cam", "ROADMostRelevantFirstAverage")
ROADLeastRelevantFirstAverage = not_landed("pytorch-grad-cam", "ROADLeastRelevantFirstAverage")
ROADCombined = not_landed("pytorch-grad-cam", "ROADCombined")
