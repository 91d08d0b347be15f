// The paper's figures, rebuilt from this library's results as SVG figures.
#pragma once
#include <string>

#include "research/paper_comparison.h"
#include "research/scaling_fit.h"
#include "research/svg.h"

namespace parscale::research {

// Like the paper's Figure 2: loss against N (log axis) for each P, observed points and the fitted
// law's curves.
svg::Figure scaling_law_figure(const FitResult& fit, const std::string& title);

// Like the paper's Figure 4 (+ Figure 1's batch average): loss against memory (top row) and
// latency (bottom row) for every batch size, the P = 1 parameter-scaling curve and each model's
// P = 1 -> 8 parallel-scaling path, with the equal-loss comparison arrow and its ratio.
svg::Figure cost_comparison_figure(const PaperComparison& comparison);

}  // namespace parscale::research
