"""A leaderboard for perceptual-metric robustness: results entries (:mod:`lit_attacks.leaderboard.entry`, one JSON
file per dataset, protocol and metric, with its schema) and the site built from any number of them
(:mod:`lit_attacks.leaderboard.site`; ``python -m lit_attacks.leaderboard build DIR... --out SITE``)."""
