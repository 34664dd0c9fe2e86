/* Stream sensor readings through the generated gru_step library, one line in, one line out,
 * the way firmware would write forecasts to a UART. Build beside a generated library:
 *
 *   python -m export.mcu bundles/demo --out build/mcu/demo
 *   cc -std=c99 -O2 -Ibuild/mcu/demo examples/mcu/stream.c build/mcu/demo/gru_step.c -lm -o gru_stream
 *   ./gru_stream < readings.txt        (each line: GRU_INPUTS comma-separated raw values)
 *
 * Each output line is the GRU_HORIZON forecasts, or "skip" for a reading that is not finite. */
#include <stdio.h>
#include <stdlib.h>
#include "gru_step.h"

int main(void)
{
    static float h[GRU_STATE_SIZE];
    float reading[GRU_INPUTS], forecast[GRU_HORIZON];
    char line[8192];
    gru_reset(h);
    while (fgets(line, sizeof line, stdin)) {
        char *p = line, *end;
        int i, k;
        for (i = 0; i < GRU_INPUTS; ++i) {
            reading[i] = strtof(p, &end);
            p = (*end == ',') ? end + 1 : end;
        }
        if (gru_forecast(reading, h, forecast) != 0) {
            puts("skip");
            continue;
        }
        for (k = 0; k < GRU_HORIZON; ++k)
            printf(k ? ",%.9g" : "%.9g", (double)forecast[k]);
        putchar('\n');
    }
    return 0;
}
