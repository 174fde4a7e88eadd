package seekmoe;

import java.util.List;

/** Tokens routed to each routed expert of one MoE layer since the server started (/v2/expert_load). */
public record LayerLoad(int layer, List<Long> counts) {
}
