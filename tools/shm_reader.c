/*
 * shm_reader: read a balance store (layout version 1) from C, following
 * docs/shm-layout.md only. Prints one line per currency:
 *
 *   NAME SCALE SEQUENCE UPDATED_NS v0 v1 ... | f0 f1 ...
 *
 * where v are the exact slot values as decimal strings and f the float64
 * views printed with %.17g. tests/mmapstore/test_c_reader.py compares this
 * with the Python reader.
 *
 * Build: cc -O2 -std=c11 -Wall -Wextra -o shm_reader tools/shm_reader.c
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "HFTBAL\0\1"
#define LAYOUT_VERSION 1u

typedef __int128 i128;

static uint64_t load_u64(const unsigned char *base, size_t offset) {
    /* Aligned 8-byte load with acquire ordering: the seqlock's read side. */
    return __atomic_load_n((const uint64_t *)(base + offset), __ATOMIC_ACQUIRE);
}

static uint32_t read_u32(const unsigned char *base, size_t offset) {
    uint32_t v;
    memcpy(&v, base + offset, sizeof v);
    return v;
}

static uint64_t read_u64(const unsigned char *base, size_t offset) {
    uint64_t v;
    memcpy(&v, base + offset, sizeof v);
    return v;
}

static void format_scaled(i128 value, uint32_t scale, char *out, size_t size) {
    char digits[64];
    int n = 0;
    int negative = value < 0;
    unsigned __int128 mag = negative ? (unsigned __int128)(-(value + 1)) + 1 : (unsigned __int128)value;
    do {
        digits[n++] = (char)('0' + (int)(mag % 10));
        mag /= 10;
    } while (mag);
    while ((uint32_t)n <= scale) digits[n++] = '0'; /* at least one digit before the point */
    size_t pos = 0;
    if (negative) out[pos++] = '-';
    for (int i = n - 1; i >= 0 && pos + 2 < size; i--) {
        out[pos++] = digits[i];
        if (scale && i == (int)scale) out[pos++] = '.';
    }
    out[pos] = '\0';
}

/* Another local user could have made the file first: trust our own user's, root's
   or $HFT_GATEWAY_UID's, and only if group and others may not write it. */
static int trusted(const struct stat *st) {
    const char *gateway_uid = getenv("HFT_GATEWAY_UID");
    int owner_ok = st->st_uid == geteuid() || st->st_uid == 0
        || (gateway_uid != NULL && *gateway_uid != '\0'
            && strtoul(gateway_uid, NULL, 10) == (unsigned long)st->st_uid);
    return owner_ok && (st->st_mode & 022) == 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s STORE_FILE\n", argv[0]);
        return 2;
    }
    int fd = open(argv[1], O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !trusted(&st)) {
        fprintf(stderr, "%s: not the gateway's file (owner or mode): not read\n", argv[1]);
        return 1;
    }
    if (st.st_size < 256) {
        fprintf(stderr, "%s: too short for a balance store\n", argv[1]);
        return 1;
    }
    const unsigned char *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (base == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (memcmp(base, MAGIC, 8) != 0 || read_u32(base, 8) != LAYOUT_VERSION) {
        fprintf(stderr, "%s: not a version %u balance store\n", argv[1], LAYOUT_VERSION);
        return 1;
    }
    uint32_t strategy_count = read_u32(base, 16);
    uint32_t capacity = read_u32(base, 24);
    uint32_t entry_size = read_u32(base, 28);
    uint64_t directory_offset = read_u64(base, 32);
    uint64_t count = load_u64(base, 48);
    if (count > capacity) count = capacity;

    for (uint64_t i = 0; i < count; i++) {
        const unsigned char *entry = base + directory_offset + i * entry_size;
        char name[21] = {0};
        memcpy(name, entry, 20);
        uint32_t scale = read_u32(entry, 20);
        uint64_t record = read_u64(entry, 24);

        i128 values[1024];
        double floats[1024];
        int64_t updated_ns;
        uint64_t seq;
        for (;;) {
            seq = load_u64(base, record);
            if (seq & 1) continue;
            memcpy(&updated_ns, base + record + 8, 8);
            memcpy(floats, base + record + 32, 8 * (size_t)strategy_count);
            for (uint32_t s = 0; s < strategy_count; s++) {
                uint64_t low;
                int64_t high;
                size_t at = record + 32 + 8 * (size_t)strategy_count + 16 * (size_t)s;
                memcpy(&low, base + at, 8);
                memcpy(&high, base + at + 8, 8);
                values[s] = (i128)(((unsigned __int128)(uint64_t)high << 64) | low);
            }
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (load_u64(base, record) == seq) break;
        }
        printf("%s %" PRIu32 " %" PRIu64 " %" PRId64, name, scale, seq / 2, updated_ns);
        char text[64];
        for (uint32_t s = 0; s < strategy_count; s++) {
            format_scaled(values[s], scale, text, sizeof text);
            printf(" %s", text);
        }
        printf(" |");
        for (uint32_t s = 0; s < strategy_count; s++) printf(" %.17g", floats[s]);
        printf("\n");
    }
    return 0;
}
