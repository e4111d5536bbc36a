"""One module per experiment of "Sparser, Better, Deeper, Stronger" (Nowak et al., ICML 2024)."""
