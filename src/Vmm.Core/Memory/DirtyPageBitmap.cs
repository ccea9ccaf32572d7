using System.Numerics;

namespace Vmm.Core.Memory;

/// <summary>
/// The dirty-page bitmap layout shared by the vhost-user log and the VMM's own write tracking
/// (vhost-user.rst, "Migration": one bit per VHOST_LOG_PAGE of 4 KiB, bit = GPA / 4096, u64 words).
/// </summary>
public static class DirtyPageBitmap
{
    /// <summary>Bytes of guest memory one bit covers (VHOST_LOG_PAGE).</summary>
    public const ulong PageSize = 4096;

    /// <summary>Pages one u64 word covers.</summary>
    public const int PagesPerWord = 64;

    /// <summary>u64 words that cover guest-physical addresses [0, <paramref name="end"/>).</summary>
    public static ulong WordsFor(ulong end) => (((end + PageSize - 1) / PageSize) + PagesPerWord - 1) / PagesPerWord;

    /// <summary>u64 words that cover every region of <paramref name="memory"/>.</summary>
    public static ulong WordsFor(GuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        IReadOnlyList<GuestMemoryRegion> regions = memory.Regions;
        if (regions.Count == 0)
        {
            return 0;
        }

        ulong last = regions[^1].LastAddress;
        return (last / PageSize / PagesPerWord) + 1;
    }

    /// <summary>Sets the bits of every page of [address, address + length) with atomic ORs; pages past <paramref name="bitmap"/> are skipped and reported.</summary>
    /// <returns>False when some page lay past the end of <paramref name="bitmap"/>.</returns>
    public static bool Mark(Span<ulong> bitmap, ulong address, ulong length)
    {
        if (length == 0)
        {
            return true;
        }

        ulong first = address / PageSize;
        ulong last = (address + (length - 1) < address ? ulong.MaxValue : address + (length - 1)) / PageSize;
        ulong limit = (ulong)bitmap.Length * PagesPerWord;
        bool inside = last < limit;
        if (first >= limit)
        {
            return false;
        }

        last = Math.Min(last, limit - 1);
        for (ulong page = first; page <= last;)
        {
            int word = (int)(page / PagesPerWord);
            int bit = (int)(page % PagesPerWord);
            int count = (int)Math.Min((ulong)(PagesPerWord - bit), last - page + 1);
            ulong mask = count == PagesPerWord ? ulong.MaxValue : ((1UL << count) - 1) << bit;
            if ((Volatile.Read(ref bitmap[word]) & mask) != mask)
            {
                Interlocked.Or(ref bitmap[word], mask);
            }

            page += (ulong)count;
        }

        return inside;
    }

    /// <summary>
    /// Moves every set bit of <paramref name="source"/> into <paramref name="destination"/>: one
    /// atomic exchange with zero per non-zero source word, so a bit set concurrently is either
    /// moved now or stays for the next call. Returns the number of bits moved.
    /// </summary>
    public static long Harvest(Span<ulong> source, Span<ulong> destination)
    {
        if (destination.Length < source.Length)
        {
            throw new ArgumentException($"The bitmap has {destination.Length} words; the log to harvest has {source.Length}.", nameof(destination));
        }

        long moved = 0;
        for (int i = 0; i < source.Length; i++)
        {
            if (Volatile.Read(ref source[i]) == 0)
            {
                continue;
            }

            ulong bits = Interlocked.Exchange(ref source[i], 0);
            destination[i] |= bits;
            moved += BitOperations.PopCount(bits);
        }

        return moved;
    }

    /// <summary>The number of pages set in <paramref name="bitmap"/>.</summary>
    public static long Count(ReadOnlySpan<ulong> bitmap)
    {
        long count = 0;
        foreach (ulong word in bitmap)
        {
            count += BitOperations.PopCount(word);
        }

        return count;
    }

    /// <summary>The guest-physical addresses of the pages set in <paramref name="bitmap"/>, in order.</summary>
    public static IEnumerable<ulong> Pages(ulong[] bitmap)
    {
        ArgumentNullException.ThrowIfNull(bitmap);
        for (int i = 0; i < bitmap.Length; i++)
        {
            ulong word = bitmap[i];
            while (word != 0)
            {
                int bit = BitOperations.TrailingZeroCount(word);
                word &= word - 1;
                yield return (((ulong)i * PagesPerWord) + (ulong)bit) * PageSize;
            }
        }
    }
}
