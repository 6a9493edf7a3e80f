"""Graph algorithms on AOTAutograd joint graphs: analyse, solve, rewrite.

Nothing here knows about the ``remat`` backend or its knobs: each function
takes plain values (a graph, arrays of costs, a budget) and returns small
typed objects, so each stage can be tested alone.
"""
