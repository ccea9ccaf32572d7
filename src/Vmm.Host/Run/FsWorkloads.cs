using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

/// <summary>
/// The workloads of a virtio-fs device (docs/cli.md): <c>fs</c> (sha256 of every regular file,
/// as <c>find . -type f | LC_ALL=C sort | xargs sha256sum</c> prints it), <c>fs-verify</c> (write,
/// fsync, read back, rename, remove) and the fs part of <c>bench</c>. Everything goes through the
/// guest's FUSE session on the device's queues.
/// </summary>
public static partial class FsWorkloads
{
    /// <summary>Deepest directory nesting the walk follows before it gives up.</summary>
    public const int MaxDepth = 1024;

    /// <summary>Most entries one directory may list (a device that lists forever is stopped here).</summary>
    public const int MaxEntriesPerDirectory = 1 << 22;

    /// <summary>
    /// Prints <c>HEX  ./path</c> for every regular file under the exported root, sorted by the
    /// bytes of the path (LC_ALL=C), exactly as GNU sha256sum prints them; a summary goes to
    /// <paramref name="log"/>.
    /// </summary>
    public static void Checksum(FsGuest fs, TextWriter output, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(fs);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        FuseInitResult init = fs.Start();
        var stopwatch = Stopwatch.StartNew();
        var walk = new TreeWalk(fs.Session, output, log);
        fs.Run(() =>
        {
            walk.Directory(Fuse.RootId, [], [fs.Session.GetAttr(Fuse.RootId).Ino]);
            return 0;
        });
        double seconds = stopwatch.Elapsed.TotalSeconds;
        log.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"fs: tag {fs.TagDescription}, FUSE 7.{init.Minor} (device 7.{init.DeviceMinor}), {(fs.Session.ReadDirPlusGranted ? "READDIRPLUS" : "READDIR+LOOKUP")}, max_read {init.MaxRead}, max_write {init.MaxWrite}: " +
            $"{walk.Files} files, {walk.Directories} directories, {Workloads.Mib((ulong)walk.Bytes)} read in {seconds * 1000:0} ms ({walk.Bytes / (1 << 20) / Math.Max(seconds, 1e-9):0.0} MiB/s)"));
    }

    /// <summary>
    /// The line sha256sum prints for <paramref name="path"/> ("./a/b"): in a name with a backslash,
    /// a newline or a carriage return these are escaped (\\, \n, \r) and the line starts with a
    /// backslash (GNU coreutils 9.1, Debian 12).
    /// </summary>
    public static string ChecksumLine(byte[] hash, ReadOnlySpan<byte> path)
    {
        ArgumentNullException.ThrowIfNull(hash);
        string name = Encoding.UTF8.GetString(path);
        bool escape = name.AsSpan().IndexOfAny('\\', '\n', '\r') >= 0;
        if (escape)
        {
            name = name.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal).Replace("\r", "\\r", StringComparison.Ordinal);
        }

        return $"{(escape ? "\\" : string.Empty)}{Convert.ToHexStringLower(hash)}  {name}";
    }

    /// <summary>
    /// The order in which to visit a directory's entries so that the paths come out sorted as
    /// <c>LC_ALL=C sort</c> sorts whole paths: by the name's bytes, a directory's name followed by
    /// '/'. (All paths below directory d start with "d/"; no name holds a '/', so comparing "d/"
    /// with a sibling's name decides where the whole subtree goes.)
    /// </summary>
    public static int CompareForPathOrder(ReadOnlySpan<byte> a, bool aIsDirectory, ReadOnlySpan<byte> b, bool bIsDirectory)
    {
        int common = Math.Min(a.Length, b.Length);
        int c = a[..common].SequenceCompareTo(b[..common]);
        if (c != 0)
        {
            return c;
        }

        int Next(ReadOnlySpan<byte> name, bool directory) => name.Length > common ? name[common] : directory ? '/' : -1;
        int na = Next(a, aIsDirectory);
        int nb = Next(b, bIsDirectory);
        if (na != nb)
        {
            return na.CompareTo(nb);
        }

        // Equal up to here: the shorter (a file, or a directory whose '/' matched) comes first.
        return (a.Length + (aIsDirectory ? 1 : 0)).CompareTo(b.Length + (bIsDirectory ? 1 : 0));
    }

    /// <summary>Reads a whole open file with up to the session's requests in flight, handing each piece to <paramref name="consume"/>; returns the bytes read.</summary>
    internal static long ReadWhole(VirtioFsSession session, FuseHandle file, ulong sizeHint, Action<ReadOnlySpan<byte>> consume)
    {
        int piece = session.Init!.MaxRead;
        int depth = session.MaxRequestsInFlight;
        var inFlight = new Queue<VirtioFsSession.PendingRead>();
        ulong next = 0;
        long total = 0;
        bool end = false;
        void Fill()
        {
            // Past the size the device gave, one read at a time finds the end (a file may have grown).
            while (!end && inFlight.Count < depth && (next < sizeHint || inFlight.Count == 0))
            {
                inFlight.Enqueue(session.SubmitRead(file, next, piece));
                next += (ulong)piece;
            }
        }

        Fill();
        while (inFlight.TryDequeue(out VirtioFsSession.PendingRead? read))
        {
            ReadOnlySpan<byte> data = session.CompleteRead(read);
            if (!end)
            {
                consume(data);
                total += data.Length;
            }

            // A short read is the end of the file (what FUSE without direct I/O means by it).
            end |= data.Length < read.Size;
            Fill();
        }

        return total;
    }

    /// <summary>
    /// Every record of directory <paramref name="node"/>, with READDIRPLUS when the device granted
    /// it, else READDIR. Each record carrying an entry is a lookup the caller now holds. A listing
    /// that does not advance, or goes on past <see cref="MaxEntriesPerDirectory"/>, is the device's error.
    /// </summary>
    internal static List<FuseDirectoryEntry> ListDirectory(VirtioFsSession session, ulong node)
    {
        var all = new List<FuseDirectoryEntry>();
        FuseHandle dir = session.OpenDir(node);
        try
        {
            ulong offset = 0;
            bool plus = session.ReadDirPlusGranted;
            while (true)
            {
                IReadOnlyList<FuseDirectoryEntry> page = plus ? session.ReadDirPlus(dir, offset) : session.ReadDir(dir, offset);
                if (page.Count == 0)
                {
                    return all;
                }

                all.AddRange(page);
                if (all.Count > MaxEntriesPerDirectory || page[^1].Offset == offset)
                {
                    foreach (FuseDirectoryEntry e in all)
                    {
                        if (e.Entry is { } entry)
                        {
                            session.Forget(entry.NodeId);
                        }
                    }

                    throw new FuseProtocolException(all.Count > MaxEntriesPerDirectory
                        ? $"the virtio-fs device listed more than {MaxEntriesPerDirectory} entries in one directory"
                        : $"the virtio-fs device's directory listing did not advance past offset {offset}");
                }

                offset = page[^1].Offset;
            }
        }
        finally
        {
            if (session.LostReason is null)
            {
                session.ReleaseDir(dir);
            }
        }
    }

    /// <summary>The depth-first walk of <see cref="Checksum"/>, one directory listing at a time.</summary>
    private sealed class TreeWalk(VirtioFsSession session, TextWriter output, TextWriter log)
    {
        public long Files { get; private set; }

        public long Directories { get; private set; }

        public long Bytes { get; private set; }

        /// <summary>Visits directory <paramref name="node"/> at <paramref name="path"/> (bytes, "" for the root); <paramref name="ancestors"/> are the inode numbers above, for loop detection.</summary>
        public void Directory(ulong node, byte[] path, List<ulong> ancestors)
        {
            if (ancestors.Count > MaxDepth)
            {
                throw new WorkloadFailedException($"The exported tree is nested deeper than {MaxDepth} directories at ./{Encoding.UTF8.GetString(path)}.");
            }

            Directories++;
            List<FuseEntry> held = [];
            List<(byte[] Name, FuseEntry Entry)> children = List(node, held);
            try
            {
                children.Sort((x, y) => CompareForPathOrder(x.Name, x.Entry.Attr.IsDirectory, y.Name, y.Entry.Attr.IsDirectory));
                foreach ((byte[] name, FuseEntry entry) in children)
                {
                    byte[] childPath = path.Length == 0 ? name : [.. path, (byte)'/', .. name];
                    if (entry.Attr.IsRegularFile)
                    {
                        File(entry, childPath);
                    }
                    else if (entry.Attr.IsDirectory)
                    {
                        if (ancestors.Contains(entry.Attr.Ino))
                        {
                            // As find(1) does: a directory that contains itself is reported and not entered.
                            log.WriteLine($"fs: ./{Encoding.UTF8.GetString(childPath)}: file system loop detected; not entered.");
                            continue;
                        }

                        ancestors.Add(entry.Attr.Ino);
                        Directory(entry.NodeId, childPath, ancestors);
                        ancestors.RemoveAt(ancestors.Count - 1);
                    }
                }
            }
            finally
            {
                if (session.LostReason is null)
                {
                    foreach (IGrouping<ulong, FuseEntry> lookups in held.GroupBy(e => e.NodeId))
                    {
                        session.Forget(lookups.Key, (ulong)lookups.LongCount());
                    }
                }
            }
        }

        private List<(byte[] Name, FuseEntry Entry)> List(ulong node, List<FuseEntry> held)
        {
            var children = new List<(byte[], FuseEntry)>();
            foreach (FuseDirectoryEntry e in ListDirectory(session, node))
            {
                if (e.Entry is { } listed)
                {
                    held.Add(listed);
                }

                if (e.IsDotOrDotDot)
                {
                    continue;
                }

                // READDIR, or READDIRPLUS without attributes for this name: LOOKUP it.
                FuseEntry? entry = e.Entry;
                if (entry is null)
                {
                    entry = session.Lookup(node, e.Name);
                    if (entry is null)
                    {
                        continue; // gone since the listing
                    }

                    held.Add(entry.Value);
                }

                children.Add((e.Name, entry.Value));
            }

            return children;
        }

        private void File(FuseEntry entry, byte[] path)
        {
            FuseHandle file = session.Open(entry.NodeId, Fuse.O_RDONLY);
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            try
            {
                Bytes += ReadWhole(session, file, entry.Attr.FileSize, data => hash.AppendData(data));
            }
            finally
            {
                if (session.LostReason is null)
                {
                    session.Flush(file);
                    session.Release(file, Fuse.O_RDONLY);
                }
            }

            Files++;
            output.WriteLine(ChecksumLine(hash.GetHashAndReset(), [(byte)'.', (byte)'/', .. path]));
        }
    }
}
