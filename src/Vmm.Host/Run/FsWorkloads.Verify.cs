using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Vmm.Host.Cli;
using Vmm.Virtio.Driver.Fs;
using Vmm.Virtio.Spec;

namespace Vmm.Host.Run;

public static partial class FsWorkloads
{
    /// <summary>
    /// <c>fs-verify</c>: in a new directory of the export, creates files and writes each with the
    /// verify pattern in requests of one size (1 byte, 4095, 4096, 64 KiB + 3, max_write and
    /// 2 × max_write + 12345: the last is split into several WRITEs), plus an empty file; fsyncs;
    /// reads everything back and compares; lists the directory; renames the files (one into a
    /// subdirectory); removes them and the directories. Prints <c>fs-verify: equal</c>; the export
    /// is left as it was, on failure too (as far as the device still answers).
    /// </summary>
    public static void Verify(FsGuest fs, TextWriter output, TextWriter log)
    {
        ArgumentNullException.ThrowIfNull(fs);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(log);
        FuseInitResult init = fs.Start();
        var stopwatch = Stopwatch.StartNew();
        var run = new VerifyRun(fs.Session, init);
        try
        {
            fs.Run(() =>
            {
                run.Execute();
                return 0;
            });
        }
        finally
        {
            run.CleanUp(log);
        }

        output.WriteLine("fs-verify: equal");
        log.WriteLine(string.Create(
            CultureInfo.InvariantCulture,
            $"fs-verify: tag {fs.TagDescription}: {run.Files} files ({Workloads.Mib((ulong)run.Bytes)}) written in requests of {string.Join(", ", run.RequestSizes)} bytes (max_write {init.MaxWrite}), " +
            $"fsynced, read back and compared, listed, renamed, removed in {stopwatch.ElapsedMilliseconds} ms"));
    }

    /// <summary>The file contents of fs-verify: the verify pattern of file <paramref name="index"/> (each file its own), any length.</summary>
    internal static byte[] VerifyContent(int index, int length)
    {
        byte[] content = new byte[(length + 7) & ~7];
        VerifyPattern.Fill(content, (ulong)index << 40);
        return content[..length];
    }

    private sealed class VerifyRun(VirtioFsSession session, FuseInitResult init)
    {
        private readonly byte[] _directory = Encoding.ASCII.GetBytes($".vmm-fs-verify-{Environment.ProcessId}-{RandomNumberGenerator.GetHexString(8, lowercase: true)}");
        private readonly byte[] _sub = "sub"u8.ToArray();

        // What exists now, to remove on the way out: (parent node, name) of files, then the directories.
        private readonly List<(ulong Parent, byte[] Name)> _files = [];
        private readonly List<(ulong Parent, byte[] Name)> _directories = [];
        private readonly List<ulong> _directoryNodes = [];

        public int[] RequestSizes { get; } = [.. new[] { 1, 4095, 4096, 65536 + 3, init.MaxWrite, (2 * init.MaxWrite) + 12345 }.Distinct()];

        public int Files { get; private set; }

        public long Bytes { get; private set; }

        public void Execute()
        {
            if (Exists(Fuse.RootId, _directory))
            {
                throw new WorkloadFailedException($"./{Encoding.ASCII.GetString(_directory)} exists already in the export.");
            }

            ulong dir = MakeDirectory(Fuse.RootId, _directory);
            ulong sub = MakeDirectory(dir, _sub);
            var contents = new Dictionary<string, byte[]>(StringComparer.Ordinal);
            for (int i = 0; i < RequestSizes.Length; i++)
            {
                int request = RequestSizes[i];
                byte[] content = VerifyContent(i + 1, (request * 3) + 7);
                string name = $"file-{request}";
                WriteFile(dir, name, content, request);
                contents[name] = content;
            }

            WriteFile(dir, "empty", [], 1);
            contents["empty"] = [];

            foreach ((string name, byte[] content) in contents)
            {
                CheckFile(dir, name, content);
            }

            CheckListing(dir, [.. contents.Keys, "sub"]);
            FuseStatFs statfs = session.StatFs();
            if (statfs.BlockSize == 0)
            {
                throw new WorkloadFailedException("STATFS reports a block size of 0.");
            }

            // Renames: each file within the directory, the largest into the subdirectory.
            string largest = $"file-{RequestSizes[^1]}";
            foreach ((string name, byte[] content) in contents.ToArray())
            {
                (ulong to, string newName) = name == largest ? (sub, "moved") : (dir, $"renamed-{name}");
                FuseAttr before = Attr(dir, name);
                session.Rename(dir, Encoding.UTF8.GetBytes(name), to, Encoding.UTF8.GetBytes(newName));
                Move(dir, name, to, newName);
                if (Exists(dir, Encoding.UTF8.GetBytes(name)))
                {
                    throw new WorkloadFailedException($"{name} is still there after its rename to {newName}.");
                }

                FuseAttr after = Attr(to, newName);
                if (after.Ino != before.Ino || after.FileSize != (ulong)content.Length)
                {
                    throw new WorkloadFailedException($"{newName} (renamed from {name}) is not the same file: inode {after.Ino} vs {before.Ino}, {after.FileSize} bytes vs {content.Length}.");
                }
            }

            CheckFile(sub, "moved", contents[largest]);
            RemoveAll();
            if (Exists(Fuse.RootId, _directory))
            {
                throw new WorkloadFailedException($"./{Encoding.ASCII.GetString(_directory)} is still there after RMDIR.");
            }
        }

        /// <summary>Removes what is left (after a failure): files, then directories, deepest first. Errors are reported, not thrown.</summary>
        public void CleanUp(TextWriter log)
        {
            if (_files.Count == 0 && _directories.Count == 0)
            {
                return;
            }

            if (session.LostReason is not null)
            {
                log.WriteLine($"fs-verify: ./{Encoding.ASCII.GetString(_directory)} could not be removed: the session is lost.");
                return;
            }

            try
            {
                RemoveAll();
            }
            catch (FuseException e)
            {
                log.WriteLine($"fs-verify: removing ./{Encoding.ASCII.GetString(_directory)} failed: {e.Message}");
            }
        }

        private void RemoveAll()
        {
            for (int i = _files.Count - 1; i >= 0; i--)
            {
                session.Unlink(_files[i].Parent, _files[i].Name);
                _files.RemoveAt(i);
            }

            for (int i = _directories.Count - 1; i >= 0; i--)
            {
                session.Rmdir(_directories[i].Parent, _directories[i].Name);
                _directories.RemoveAt(i);
            }

            foreach (ulong node in _directoryNodes)
            {
                session.Forget(node);
            }

            _directoryNodes.Clear();
        }

        private ulong MakeDirectory(ulong parent, byte[] name)
        {
            FuseEntry entry = session.Mkdir(parent, name, 0x1ED /* 0755 */);
            _directories.Add((parent, name));
            _directoryNodes.Add(entry.NodeId);
            return entry.NodeId;
        }

        private void WriteFile(ulong dir, string name, byte[] content, int request)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(name);
            (FuseEntry entry, FuseHandle handle) = session.Create(dir, bytes, Fuse.O_RDWR | Fuse.O_EXCL, 0x1A4 /* 0644 */);
            _files.Add((dir, bytes));
            try
            {
                for (int offset = 0; offset < content.Length; offset += request)
                {
                    session.WriteAll(handle, (ulong)offset, content.AsSpan(offset, Math.Min(request, content.Length - offset)));
                }

                session.Fsync(handle);
                session.Flush(handle);
            }
            finally
            {
                if (session.LostReason is null)
                {
                    session.Release(handle, Fuse.O_RDWR);
                    session.Forget(entry.NodeId);
                }
            }

            Files++;
            Bytes += content.Length;
        }

        private void CheckFile(ulong dir, string name, byte[] content)
        {
            FuseEntry entry = session.Lookup(dir, Encoding.UTF8.GetBytes(name))
                ?? throw new WorkloadFailedException($"{name} is not there after it was written.");
            try
            {
                if (!entry.Attr.IsRegularFile || entry.Attr.FileSize != (ulong)content.Length)
                {
                    throw new WorkloadFailedException($"{name} has mode 0{Convert.ToString(entry.Attr.Mode, 8)} and {entry.Attr.FileSize} bytes; {content.Length} were written.");
                }

                FuseHandle handle = session.Open(entry.NodeId, Fuse.O_RDONLY);
                try
                {
                    long at = 0;
                    ReadWhole(session, handle, (ulong)content.Length, data =>
                    {
                        if (at + data.Length > content.Length || !data.SequenceEqual(content.AsSpan((int)at, data.Length)))
                        {
                            int first = at + data.Length > content.Length ? content.Length - (int)at : data.CommonPrefixLength(content.AsSpan((int)at));
                            throw new WorkloadFailedException($"{name}: the data read back at byte {at + first} differs from what was written.");
                        }

                        at += data.Length;
                    });
                    if (at != content.Length)
                    {
                        throw new WorkloadFailedException($"{name}: {at} bytes read back, {content.Length} were written.");
                    }

                    // One read that starts off any boundary.
                    if (content.Length > 1)
                    {
                        byte[] piece = new byte[Math.Min(content.Length - 1, init.MaxRead)];
                        int got = session.Read(handle, 1, piece);
                        if (got != piece.Length || !piece.AsSpan().SequenceEqual(content.AsSpan(1, piece.Length)))
                        {
                            throw new WorkloadFailedException($"{name}: a read of {piece.Length} bytes at offset 1 came back wrong ({got} bytes).");
                        }
                    }
                }
                finally
                {
                    if (session.LostReason is null)
                    {
                        session.Release(handle, Fuse.O_RDONLY);
                    }
                }
            }
            finally
            {
                if (session.LostReason is null)
                {
                    session.Forget(entry.NodeId);
                }
            }
        }

        private void CheckListing(ulong dir, IReadOnlyCollection<string> expected)
        {
            var names = new List<string>();
            foreach (FuseDirectoryEntry e in ListDirectory(session, dir))
            {
                if (e.Entry is { } entry)
                {
                    session.Forget(entry.NodeId);
                }

                if (!e.IsDotOrDotDot)
                {
                    names.Add(Encoding.UTF8.GetString(e.Name));
                }
            }

            if (!names.Order(StringComparer.Ordinal).SequenceEqual(expected.Order(StringComparer.Ordinal)))
            {
                throw new WorkloadFailedException($"the directory lists {string.Join(", ", names.Order(StringComparer.Ordinal))}; expected {string.Join(", ", expected.Order(StringComparer.Ordinal))}.");
            }
        }

        private FuseAttr Attr(ulong dir, string name)
        {
            FuseEntry entry = session.Lookup(dir, Encoding.UTF8.GetBytes(name))
                ?? throw new WorkloadFailedException($"{name} is not there.");
            session.Forget(entry.NodeId);
            return entry.Attr;
        }

        private void Move(ulong fromDir, string from, ulong toDir, string to)
        {
            int i = _files.FindIndex(f => f.Parent == fromDir && f.Name.AsSpan().SequenceEqual(Encoding.UTF8.GetBytes(from)));
            _files[i] = (toDir, Encoding.UTF8.GetBytes(to));
        }

        private bool Exists(ulong dir, byte[] name)
        {
            if (session.Lookup(dir, name) is not { } entry)
            {
                return false;
            }

            session.Forget(entry.NodeId);
            return true;
        }
    }
}
