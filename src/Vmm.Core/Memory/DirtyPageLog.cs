using System.Numerics;
using Vmm.Core.Posix;

namespace Vmm.Core.Memory;

/// <summary>
/// The dirty-page log of live migration (vhost-user.rst, "Migration", "Dirty pages logging"):
/// a bitmap in shared memory with one bit per 4 KiB guest page, page <c>n = gpa / 4096</c>
/// being bit <c>n % 8</c> of byte <c>n / 8</c>, covering guest-physical addresses from 0. The
/// back-end sets bits for the pages it writes; the front-end harvests and clears them. Both
/// sides run at once, so every access is atomic ("Use atomic operations, as the log may be
/// concurrently manipulated"): marks are an atomic OR and harvesting an atomic exchange, on
/// 64-bit words (on a little-endian machine the byte order of the spec and bit <c>n % 64</c> of
/// word <c>n / 64</c> are the same bit; QEMU harvests in such words too), and on single bytes for
/// a tail shorter than a word.
/// </summary>
/// <remarks>
/// A log is retired by <see cref="Dispose"/>: a <see cref="MarkDirty"/> that starts afterwards
/// returns false (the caller looks for the log that replaced it), and the mapping is released
/// only once every mark in progress has left it, so no thread writes into memory that is no
/// longer mapped. Marks enter and leave with one atomic increment and decrement each.
/// </remarks>
public sealed unsafe class DirtyPageLog : IDisposable
{
    /// <summary><c>VHOST_LOG_PAGE</c>: the bytes of guest memory one bit covers.</summary>
    public const ulong PageSize = 0x1000;

    public const int PageShift = 12;

    private const int PagesPerWord = 64;
    private const ulong BytesPerWord = 8;

    private readonly SharedMapping _mapping;
    private readonly byte* _base;
    private readonly ulong _words;
    private readonly ulong _tailBytes;

    /// <summary>Marks in progress; a retired log waits for it to reach zero before it unmaps.</summary>
    private int _users;
    private volatile bool _retired;

    private DirtyPageLog(SharedMapping mapping, ulong size, SafeFileDescriptor? fd)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("The dirty-page log is read in 64-bit words, which needs a little-endian machine.");
        }

        _mapping = mapping;
        _base = mapping.Address;
        Size = size;
        _words = size / BytesPerWord;
        _tailBytes = size % BytesPerWord;
        Fd = fd;
    }

    /// <summary>Bytes of the log.</summary>
    public ulong Size { get; }

    /// <summary>Guest-physical addresses below this have a bit (saturates at 2^64 - 1).</summary>
    public ulong CoveredBytes => Size > ulong.MaxValue >> (PageShift + 3) ? ulong.MaxValue : Size << (PageShift + 3);

    /// <summary>The file of a log made by <see cref="Create"/> (a sealed memfd, to hand to a back-end); null for a mapped peer's log.</summary>
    public SafeFileDescriptor? Fd { get; }

    /// <summary>
    /// The bytes of a log covering guest-physical addresses [0, <paramref name="guestMemoryEnd"/>),
    /// rounded up to whole 64-bit words.
    /// </summary>
    public static ulong SizeFor(ulong guestMemoryEnd)
    {
        ulong bytes = BytesToCover(guestMemoryEnd);
        return (bytes / BytesPerWord * BytesPerWord) + (bytes % BytesPerWord != 0 ? BytesPerWord : 0);
    }

    /// <summary>
    /// The fewest bytes of log that give every page below <paramref name="guestMemoryEnd"/> its
    /// bit: what a log a peer describes must have at least (vhost-user.rst: "large enough to
    /// cover all known guest addresses").
    /// </summary>
    public static ulong BytesToCover(ulong guestMemoryEnd)
    {
        ulong pages = (guestMemoryEnd >> PageShift) + ((guestMemoryEnd & (PageSize - 1)) != 0 ? 1UL : 0);
        return (pages / 8) + (pages % 8 != 0 ? 1UL : 0);
    }

    /// <summary>
    /// A new, zeroed log covering [0, <paramref name="guestMemoryEnd"/>) in a memfd sealed against
    /// shrinking and growing (<see cref="MemFd.CreatedSeals"/>), for a front-end to send with
    /// SET_LOG_BASE (offset 0, size <see cref="Size"/>).
    /// </summary>
    public static DirtyPageLog Create(ulong guestMemoryEnd)
    {
        ulong size = SizeFor(guestMemoryEnd);
        ArgumentOutOfRangeException.ThrowIfZero(size, nameof(guestMemoryEnd));
        SafeFileDescriptor fd = MemFd.Create("vmm-dirty-log", size);
        try
        {
            return new DirtyPageLog(SharedMapping.Map(fd, 0, size), size, fd);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Maps the log a peer described: <paramref name="size"/> bytes at <paramref name="offset"/>
    /// of the file behind <paramref name="fd"/>, which must be a regular file (a memfd or a file
    /// on tmpfs or hugetlbfs) holding the whole range, and must not be able to shrink under the
    /// mapping: it is sealed against shrinking where it allows, else mapped under the SIGBUS
    /// guard when <paramref name="onTruncated"/> is given, else refused. The caller keeps
    /// <paramref name="fd"/> (the mapping does not need it once made).
    /// </summary>
    /// <exception cref="ArgumentException">The description or the file is unfit; the message says why.</exception>
    public static DirtyPageLog Map(SafeFileDescriptor fd, ulong size, ulong offset, Action? onTruncated = null)
    {
        ArgumentNullException.ThrowIfNull(fd);
        if (size == 0)
        {
            throw new ArgumentException("the log size is zero");
        }

        if (offset > ulong.MaxValue - size || offset + size > long.MaxValue)
        {
            throw new ArgumentException($"the log range [0x{offset:x}, +0x{size:x}) overflows a file offset");
        }

        FileKind kind = FileDescriptors.GetKind(fd);
        if (kind != FileKind.RegularFile)
        {
            throw new ArgumentException($"the log fd is {FileDescriptors.Describe(fd)}, not a memfd or a regular file");
        }

        ulong fileSize = MemFd.GetFileSize(fd);
        if (offset + size > fileSize)
        {
            throw new ArgumentException($"the log range [0x{offset:x}, +0x{size:x}) ends beyond its file of 0x{fileSize:x} bytes");
        }

        SharedMapping mapping;
        if (MemFd.TrySealAgainstShrinking(fd))
        {
            mapping = SharedMapping.Map(fd, offset, size);
        }
        else if (onTruncated is not null && SigbusGuard.UnavailableReason is null)
        {
            mapping = SharedMapping.MapGuarded(fd, offset, size, onTruncated);
        }
        else
        {
            throw new ArgumentException("the log's file can still shrink (it is not a memfd sealed against shrinking), and a page taken from under the mapping would crash this process");
        }

        return new DirtyPageLog(mapping, size, fd: null);
    }

    /// <summary>
    /// Sets the bit of every page that [<paramref name="gpa"/>, +<paramref name="length"/>)
    /// touches, with an atomic OR. Pages beyond <see cref="CoveredBytes"/> have no bit and are
    /// skipped (vhost-user.rst: the front-end sizes the log to cover all guest memory). Returns
    /// false, marking nothing, when the log was retired (<see cref="Dispose"/>): the caller marks
    /// the log that replaced it.
    /// </summary>
    public bool MarkDirty(ulong gpa, ulong length)
    {
        // Full fence (Interlocked): the increment is visible before _retired is read, and the
        // retiring thread sets _retired before it reads _users (Dispose), so one of the two
        // always sees the other.
        Interlocked.Increment(ref _users);
        try
        {
            if (_retired)
            {
                return false;
            }

            if (length != 0)
            {
                ulong first = gpa >> PageShift;
                ulong last = (length - 1 > ulong.MaxValue - gpa ? ulong.MaxValue : gpa + (length - 1)) >> PageShift;
                MarkPages(first, last);
            }

            return true;
        }
        finally
        {
            Interlocked.Decrement(ref _users);
        }
    }

    /// <summary>
    /// Moves the set bits into <paramref name="bitmap"/> (OR-ed in, same layout: bit <c>n % 64</c>
    /// of word <c>n / 64</c> is page n) and clears them in the log, one atomic exchange per word,
    /// so a bit the peer sets meanwhile is either harvested now or stays for the next call.
    /// Pages past the end of <paramref name="bitmap"/> stay in the log. Returns the pages found dirty.
    /// </summary>
    public ulong HarvestAndClear(Span<ulong> bitmap)
    {
        ObjectDisposedException.ThrowIf(_retired, this);
        ulong count = 0;
        ulong words = Math.Min(_words, (ulong)bitmap.Length);
        ulong* log = (ulong*)_base;
        for (ulong i = 0; i < words; i++)
        {
            // A plain read first: most words are clean, and an exchange would dirty their cache line.
            if (Volatile.Read(ref log[i]) != 0)
            {
                ulong v = Interlocked.Exchange(ref log[i], 0);
                bitmap[(int)i] |= v;
                count += (ulong)BitOperations.PopCount(v);
            }
        }

        if (_tailBytes != 0 && _words < (ulong)bitmap.Length)
        {
            ulong v = 0;
            for (ulong b = 0; b < _tailBytes; b++)
            {
                v |= (ulong)Interlocked.Exchange(ref _base[(_words * BytesPerWord) + b], 0) << (int)(b * 8);
            }

            bitmap[(int)_words] |= v;
            count += (ulong)BitOperations.PopCount(v);
        }

        return count;
    }

    /// <summary>True when page <paramref name="page"/>'s bit is set (a plain read, for diagnostics and tests).</summary>
    public bool IsDirty(ulong page)
    {
        ObjectDisposedException.ThrowIf(_retired, this);
        ulong byteIndex = page / 8;
        return byteIndex < Size && (Volatile.Read(ref _base[byteIndex]) & (1 << (int)(page % 8))) != 0;
    }

    /// <summary>
    /// Retires the log: marks that start from now on return false, and the mapping is released
    /// once the marks in progress have left it (each is a few atomic operations long, so the wait
    /// is a short spin). The file of a created log is closed.
    /// </summary>
    public void Dispose()
    {
        if (_retired)
        {
            return;
        }

        _retired = true;
        Interlocked.MemoryBarrier();
        SpinWait spin = default;
        while (Volatile.Read(ref _users) != 0)
        {
            spin.SpinOnce();
        }

        _mapping.Dispose();
        Fd?.Dispose();
    }

    private void MarkPages(ulong first, ulong last)
    {
        ulong* log = (ulong*)_base;
        ulong page = first;
        while (page <= last)
        {
            ulong word = page / PagesPerWord;
            if (word >= _words)
            {
                MarkTail(page, last);
                return;
            }

            int bit = (int)(page % PagesPerWord);
            ulong span = Math.Min(last - page, (ulong)(PagesPerWord - 1 - bit));
            ulong mask = span == PagesPerWord - 1 ? ulong.MaxValue : ((1UL << (int)(span + 1)) - 1) << bit;

            // Skips the atomic when the bits are set already (a page written again and again).
            if ((Volatile.Read(ref log[word]) & mask) != mask)
            {
                Interlocked.Or(ref log[word], mask);
            }

            if (last - page <= span)
            {
                return;
            }

            page += span + 1;
        }
    }

    /// <summary>The bytes after the last whole word, when the peer's size is not a multiple of 8.</summary>
    private void MarkTail(ulong page, ulong last)
    {
        ulong end = Math.Min(last, (Size * 8) - 1);
        for (; page <= end; page++)
        {
            ref byte b = ref _base[page / 8];
            byte bit = (byte)(1 << (int)(page % 8));
            byte seen = Volatile.Read(ref b);
            while ((seen & bit) == 0)
            {
                byte was = Interlocked.CompareExchange(ref b, (byte)(seen | bit), seen);
                if (was == seen)
                {
                    break;
                }

                seen = was;
            }
        }
    }
}
