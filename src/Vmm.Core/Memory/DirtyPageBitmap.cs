using System.Numerics;

namespace Vmm.Core.Memory;

/// <summary>
/// Bitmaps in the layout of <see cref="DirtyPageLog"/> held by a caller (what
/// <see cref="IDirtyPageTracking.HarvestDirtyPages"/> fills): one bit per 4 KiB page, bit
/// <c>n % 64</c> of u64 word <c>n / 64</c> for the page at guest-physical address <c>n * 4096</c>.
/// </summary>
public static class DirtyPageBitmap
{
    /// <summary>Pages one u64 word covers.</summary>
    public const int PagesPerWord = 64;

    /// <summary>u64 words that cover guest-physical addresses [0, <paramref name="end"/>).</summary>
    public static ulong WordsFor(ulong end) => DirtyPageLog.SizeFor(end) / sizeof(ulong);

    /// <summary>u64 words that cover every region of <paramref name="memory"/>.</summary>
    public static ulong WordsFor(GuestMemory memory) => WordsFor(End(memory));

    /// <summary>The end of the highest region of <paramref name="memory"/> (0 without regions; saturates at 2^64 - 1).</summary>
    public static ulong End(GuestMemory memory)
    {
        ArgumentNullException.ThrowIfNull(memory);
        IReadOnlyList<GuestMemoryRegion> regions = memory.Regions;
        return regions.Count == 0 ? 0 : regions[^1].LastAddress == ulong.MaxValue ? ulong.MaxValue : regions[^1].LastAddress + 1;
    }

    /// <summary>Sets the bits of the pages [address, address + length) touches that lie inside <paramref name="bitmap"/>; returns how many were not set before.</summary>
    public static long Mark(Span<ulong> bitmap, ulong address, ulong length)
    {
        long added = 0;
        if (length == 0)
        {
            return 0;
        }

        ulong first = address / DirtyPageLog.PageSize;
        ulong last = (length - 1 > ulong.MaxValue - address ? ulong.MaxValue : address + (length - 1)) / DirtyPageLog.PageSize;
        ulong limit = (ulong)bitmap.Length * PagesPerWord;
        for (ulong page = first; page <= last && page < limit; page++)
        {
            ulong bit = 1UL << (int)(page % PagesPerWord);
            ref ulong word = ref bitmap[(int)(page / PagesPerWord)];
            if ((word & bit) == 0)
            {
                word |= bit;
                added++;
            }
        }

        return added;
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
                yield return (((ulong)i * PagesPerWord) + (ulong)bit) * DirtyPageLog.PageSize;
            }
        }
    }
}
