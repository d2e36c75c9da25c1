"""LART: action recognition over 3D person tracklets (seed 000 chapter 3, seed 001)."""
