namespace ResLora.Tests.Infrastructure;

internal static class TestDirs
{
    /// <summary>
    /// A new temporary folder in memory (tmpfs, /dev/shm) where the machine has one, else in the temp folder: for tests
    /// that write thousands of small files or fsync often, which a busy disk makes slow. The caller deletes it.
    /// </summary>
    public static string InMemory(string prefix) => Directory.Exists("/dev/shm")
        ? Directory.CreateDirectory(Path.Combine("/dev/shm", $"{prefix}{Guid.NewGuid():N}")).FullName
        : Directory.CreateTempSubdirectory(prefix).FullName;
}
