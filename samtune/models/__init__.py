"""The model zoo (`registry`): SAM, MedSAM, MobileSAM, HQ-SAM, SAM2/2.1, MedSAM2 wrappers behind one
`PromptableModel`, each family's upstream preprocessing, official/HF checkpoint loading, LoRA and
freezing, weight and ONNX export, the oracle. Imports config, atomic and data."""
