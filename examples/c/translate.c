/*
 * translate.c: translate standard input with seqforge's C ABI, or continue it with a language
 * model.
 *
 *   translate [--nbest N] [--search JSON] [--threads N] [--workers N] [--device D]
 *             [--call translate|complete] MODEL_DIR < in.txt
 *
 * Reads every line of standard input (a trailing "\r" dropped), translates them in one batch
 * and prints one translation per input line, in input order (an empty line for an empty
 * input). On a language model (seqforge_translator_task), each line is a prompt instead and
 * seqforge_complete prints its continuation (an empty line is unconditional generation).
 * --call picks the function whatever the model's task (calling the other task's function
 * fails with SEQFORGE_STATUS_WRONG_TASK).
 *
 * With --nbest N, prints N-best lists instead: for each input line and hypothesis,
 * "LINE<TAB>RANK<TAB>SCORE<TAB>TEXT" (LINE and RANK 0-based, SCORE the hypothesis score).
 * --search passes search options as JSON, e.g. '{"beam": 4, "lenpen": 0.6}'.
 *
 * Build (from the repository root):
 *   cargo build --release -p seqforge-capi
 *   cc -std=c11 -Wall -Wextra -o translate examples/c/translate.c -Iruntime/include \
 *      -Ltarget/release -lseqforge -Wl,-rpath,"$PWD/target/release"
 *
 * Every call's status is checked; on failure seqforge_last_error() is printed and the program
 * exits with status 1 after freeing what it holds.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "seqforge.h"

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [--nbest N] [--search JSON] [--threads N] [--workers N] [--device D] "
            "[--call translate|complete] MODEL_DIR < lines\n",
            argv0);
}

/* Parses a non-negative decimal count; returns 0 on success. */
static int parse_count(const char *text, size_t *out) {
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (text[0] == '\0' || text[0] == '-' || *end != '\0') {
        return -1;
    }
    *out = (size_t)value;
    return 0;
}

/* Reads all lines of `in` into a growing array; returns 0 on success. */
static int read_lines(FILE *in, char ***lines_out, size_t *count_out) {
    char **lines = NULL;
    size_t count = 0, capacity = 0;
    char *line = NULL;
    size_t line_capacity = 0;
    ssize_t length;
    while ((length = getline(&line, &line_capacity, in)) >= 0) {
        if (length > 0 && line[length - 1] == '\n') {
            line[--length] = '\0';
        }
        if (length > 0 && line[length - 1] == '\r') {
            line[--length] = '\0';
        }
        if (count == capacity) {
            size_t new_capacity = capacity ? 2 * capacity : 16;
            char **grown = realloc(lines, new_capacity * sizeof *grown);
            if (grown == NULL) {
                goto fail;
            }
            lines = grown;
            capacity = new_capacity;
        }
        lines[count] = strdup(line);
        if (lines[count] == NULL) {
            goto fail;
        }
        count++;
    }
    free(line);
    if (ferror(in)) {
        line = NULL;
        goto fail;
    }
    *lines_out = lines;
    *count_out = count;
    return 0;
fail:
    free(line);
    for (size_t i = 0; i < count; i++) {
        free(lines[i]);
    }
    free(lines);
    return -1;
}

int main(int argc, char **argv) {
    size_t nbest = 0; /* 0: plain output */
    const char *search = NULL;
    const char *model_dir = NULL;
    const char *call = NULL; /* NULL: the function of the model's task */
    SeqforgeOptions options;
    if (seqforge_options_default(&options) != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_options_default: %s\n", seqforge_last_error());
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(arg, "--nbest") == 0 && has_value) {
            if (parse_count(argv[++i], &nbest) != 0 || nbest == 0) {
                fprintf(stderr, "--nbest: expected a positive number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(arg, "--search") == 0 && has_value) {
            search = argv[++i];
        } else if (strcmp(arg, "--threads") == 0 && has_value) {
            if (parse_count(argv[++i], &options.threads) != 0) {
                fprintf(stderr, "--threads: expected a number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(arg, "--workers") == 0 && has_value) {
            if (parse_count(argv[++i], &options.workers) != 0) {
                fprintf(stderr, "--workers: expected a number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(arg, "--device") == 0 && has_value) {
            options.device = argv[++i];
        } else if (strcmp(arg, "--call") == 0 && has_value) {
            call = argv[++i];
            if (strcmp(call, "translate") != 0 && strcmp(call, "complete") != 0) {
                fprintf(stderr, "--call: expected translate or complete, got '%s'\n", call);
                return 2;
            }
        } else if (arg[0] == '-' || model_dir != NULL) {
            usage(argv[0]);
            return 2;
        } else {
            model_dir = arg;
        }
    }
    if (model_dir == NULL) {
        usage(argv[0]);
        return 2;
    }

    /* The per-call search options: --search, with --nbest on top when given. */
    char *search_json = NULL;
    if (nbest > 0) {
        const char *base = search != NULL ? search : "{}";
        const char *brace = strchr(base, '{');
        size_t size = strlen(base) + 64;
        search_json = malloc(size);
        if (search_json == NULL || brace == NULL) {
            fprintf(stderr, "--search: expected a JSON object\n");
            free(search_json);
            return 2;
        }
        /* {"nbest": N, <the rest of the object>} ("nbest" given twice would be an error). */
        const char *rest = brace + 1;
        while (*rest == ' ' || *rest == '\t' || *rest == '\n') {
            rest++;
        }
        snprintf(search_json, size, "{\"nbest\": %zu%s%s", nbest, *rest == '}' ? "" : ", ", rest);
    }

    char **lines = NULL;
    size_t count = 0;
    if (read_lines(stdin, &lines, &count) != 0) {
        fprintf(stderr, "reading stdin failed\n");
        free(search_json);
        return 1;
    }

    int exit_code = 1;
    SeqforgeTranslator *translator = NULL;
    SeqforgeResult *result = NULL;
    SeqforgeStatus status = seqforge_translator_create(model_dir, &options, &translator);
    if (status != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_translator_create (status %d): %s\n", (int)status,
                seqforge_last_error());
        goto done;
    }
    SeqforgeTask task = SEQFORGE_TASK_TRANSLATION;
    status = seqforge_translator_task(translator, &task);
    if (status != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_translator_task (status %d): %s\n", (int)status,
                seqforge_last_error());
        goto done;
    }
    int complete = call != NULL ? strcmp(call, "complete") == 0
                                : task == SEQFORGE_TASK_LANGUAGE_MODELING;
    const char *const *texts = (const char *const *)lines;
    const char *per_call = search_json != NULL ? search_json : search;
    status = complete ? seqforge_complete(translator, texts, count, per_call, &result)
                      : seqforge_translate(translator, texts, count, per_call, &result);
    if (status != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "%s (status %d): %s\n",
                complete ? "seqforge_complete" : "seqforge_translate", (int)status,
                seqforge_last_error());
        goto done;
    }
    const SeqforgeTranslation *translations = NULL;
    size_t translated = 0;
    status = seqforge_result_translations(result, &translations, &translated);
    if (status != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_result_translations (status %d): %s\n", (int)status,
                seqforge_last_error());
        goto done;
    }
    for (size_t i = 0; i < translated; i++) {
        const SeqforgeTranslation *t = &translations[i];
        if (nbest == 0) {
            if (t->hypotheses_len > 0) {
                fwrite(t->hypotheses[0].text, 1, t->hypotheses[0].text_len, stdout);
            }
            putchar('\n');
            continue;
        }
        for (size_t k = 0; k < t->hypotheses_len; k++) {
            const SeqforgeHypothesis *h = &t->hypotheses[k];
            printf("%zu\t%zu\t%.6f\t", i, k, (double)h->score);
            fwrite(h->text, 1, h->text_len, stdout);
            putchar('\n');
        }
    }
    exit_code = fflush(stdout) == 0 ? 0 : 1;

done:
    if (result != NULL && seqforge_result_free(result) != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_result_free: %s\n", seqforge_last_error());
        exit_code = 1;
    }
    if (translator != NULL && seqforge_translator_free(translator) != SEQFORGE_STATUS_OK) {
        fprintf(stderr, "seqforge_translator_free: %s\n", seqforge_last_error());
        exit_code = 1;
    }
    for (size_t i = 0; i < count; i++) {
        free(lines[i]);
    }
    free(lines);
    free(search_json);
    return exit_code;
}
