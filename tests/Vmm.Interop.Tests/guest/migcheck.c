/*
 * migcheck: the guest side of the live-migration interop test (scenario blk-migrate of
 * build-guest.sh, MigrationInteropTests). Built by build-guest.sh with gcc -static.
 *
 * Usage: migcheck DEVICE OFF_MIB MIB SEED
 *
 * The host drives the phases by writing a word into sector 0 of the image, which this program
 * polls with O_DIRECT into its own small buffer (so the poll never reaches the data buffer):
 *
 *  1. A MIB MiB buffer is filled with 0xFF by the CPU and locked (no page of it is moved or
 *     swapped: a move is a CPU copy, which QEMU would see as a write to the new page).
 *     Prints "VMMTEST filled=MIB".
 *  2. On "vmmread" (the host writes it once QEMU sent all of guest memory), one O_DIRECT read
 *     fills the buffer with the data at OFF_MIB: the device writes it by DMA straight into
 *     these user pages, which the CPU never writes again. Only the back-end's dirty-page log
 *     can tell QEMU that they changed. Prints "VMMTEST read=MIB".
 *  3. On "vmmdone" (the host writes it once the migration completed: only the destination
 *     runs then), the buffer is compared with the pattern the host wrote there, without
 *     reading the disk again. Prints "VMMTEST data=ok|bad", "VMMTEST data.bad=<pages that
 *     differ>" and "VMMTEST data.ff=<pages still all 0xFF>", the pages that reached the
 *     destination as they were before the device's write.
 *
 * The pattern for seed S: 64-byte lines, line i = printf "%-63s\n" "vmmtest S i".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MIB (1024L * 1024L)
#define PAGE 4096L
#define LINE 64L

static void mark(const char *fmt, ...)
{
	va_list ap;
	printf("VMMTEST ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static void die(const char *what)
{
	mark("error=migcheck-%s-%s", what, strerror(errno));
	exit(1);
}

/* Best effort: a kernel without the knob has nothing to turn off. */
static void sysctl(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return;
	if (write(fd, value, strlen(value)) < 0)
		mark("error=migcheck-sysctl-%s", path);
	close(fd);
}

/* Polls sector 0 (O_DIRECT, into its own aligned buffer) until it starts with word. */
static void wait_for(int fd, const char *word)
{
	static char *sector;
	if (!sector && posix_memalign((void **)&sector, PAGE, PAGE) != 0)
		die("memalign");
	for (;;) {
		if (pread(fd, sector, 512, 0) != 512)
			die("poll");
		if (memcmp(sector, word, strlen(word)) == 0)
			return;
		usleep(500 * 1000);
	}
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: migcheck DEVICE OFF_MIB MIB SEED\n");
		return 2;
	}
	long off = atol(argv[2]), mib = atol(argv[3]);
	const char *seed = argv[4];
	if (off < 1 || mib < 1 || mib > 1024) {
		fprintf(stderr, "migcheck: bad OFF_MIB or MIB\n");
		return 2;
	}
	size_t size = (size_t)mib * MIB;

	int fd = open(argv[1], O_RDONLY | O_DIRECT);
	if (fd < 0)
		die("open");

	/* Compaction may move locked pages too unless told not to (vm.compact_unevictable_allowed). */
	sysctl("/proc/sys/vm/compact_unevictable_allowed", "0");
	unsigned char *buf = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED)
		die("mmap");
	/* No transparent huge pages: khugepaged would copy small pages into a huge one. */
	if (madvise(buf, size, MADV_NOHUGEPAGE) != 0)
		die("madvise");
	memset(buf, 0xff, size);
	if (mlock(buf, size) != 0)
		die("mlock");
	mark("filled=%ld", mib);

	wait_for(fd, "vmmread");
	for (size_t done = 0; done < size;) {
		ssize_t n = pread(fd, buf + done, size - done, (off_t)off * MIB + (off_t)done);
		if (n <= 0) {
			if (n == 0)
				errno = EIO;
			die("read");
		}
		done += (size_t)n;
	}
	mark("read=%ld", mib);

	wait_for(fd, "vmmdone");
	long bad = 0, ff = 0;
	char label[LINE], line[LINE + 1];
	for (long page = 0; page < (long)(size / PAGE); page++) {
		const unsigned char *p = buf + page * PAGE;
		int differs = 0, all_ff = 1;
		for (long i = 0; i < PAGE / LINE; i++) {
			snprintf(label, sizeof label, "vmmtest %s %ld", seed, page * (PAGE / LINE) + i);
			snprintf(line, sizeof line, "%-63s\n", label);
			if (memcmp(p + i * LINE, line, LINE) != 0)
				differs = 1;
		}
		for (long i = 0; i < PAGE; i++)
			if (p[i] != 0xff) {
				all_ff = 0;
				break;
			}
		bad += differs;
		ff += all_ff;
	}
	mark("data=%s", bad == 0 ? "ok" : "bad");
	mark("data.bad=%ld", bad);
	mark("data.ff=%ld", ff);
	return 0;
}
